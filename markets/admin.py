from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from markets.models import Award, Bid, BidEvent, BidProposal, DepotSite, MarketOperator, PricePoint, Product
from markets.regulation.models import RegulationSignal, ReserveDeployment


@admin.register(MarketOperator)
class MarketOperatorAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "interval_minutes", "gate_closure_local", "min_bid_w", "bid_increment_w")


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("code", "operator", "kind", "direction", "sustain_minutes", "active")


@admin.register(DepotSite)
class DepotSiteAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "threshold_w", "demand_charge")


@admin.register(PricePoint)
class PricePointAdmin(admin.ModelAdmin):
    list_display = ("product", "location", "interval_start", "price", "kind", "source", "belief_time")
    list_filter = ("product", "kind", "source")


@admin.register(BidProposal)
class BidProposalAdmin(admin.ModelAdmin):
    list_display = ("operator", "portfolio", "horizon_start", "status", "scheduler", "objective", "solve_ms")
    readonly_fields = ("inputs",)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Bids, awards and their audit change only through the ``markets.services`` modules, never by hand in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Bid)
class BidAdmin(ReadOnlyAdmin):
    list_display = ("external_ref", "product", "interval_start", "quantity_w", "price", "status")
    list_filter = ("status", "product")


@admin.register(Award)
class AwardAdmin(ReadOnlyAdmin):
    list_display = ("bid", "product", "interval_start", "awarded_w", "clearing_price", "source")


@admin.register(BidEvent)
class BidEventAdmin(ReadOnlyAdmin):
    list_display = ("bid", "at", "actor_label", "action", "from_status", "to_status")


@admin.register(RegulationSignal)
class RegulationSignalAdmin(admin.ModelAdmin):
    list_display = ("product", "portfolio", "at", "value", "source", "belief_time")
    list_filter = ("product", "portfolio", "source")
    date_hierarchy = "at"


@admin.register(ReserveDeployment)
class ReserveDeploymentAdmin(admin.ModelAdmin):
    list_display = ("portfolio", "event_id", "power_w", "start", "end", "source", "belief_time")
    list_filter = ("portfolio", "source")
    search_fields = ("event_id",)
    date_hierarchy = "start"


# Peak shaving: site meters, tariffs and their charges (plans and settlements are read-only records).
from markets.peak.models import (  # noqa: E402
    DemandCharge,
    DemandTariff,
    PeakPlan,
    PeakSettlement,
    SiteDataUpload,
    SiteMeter,
)


class DemandChargeInline(admin.TabularInline):
    model = DemandCharge
    extra = 1


@admin.register(DemandTariff)
class DemandTariffAdmin(admin.ModelAdmin):
    list_display = ("site", "name", "valid_from", "demand_interval_minutes", "billing_day", "timezone")
    inlines = [DemandChargeInline]


@admin.register(SiteMeter)
class SiteMeterAdmin(admin.ModelAdmin):
    list_display = ("site", "kind", "station", "evse_id", "active")


@admin.register(PeakPlan, PeakSettlement, SiteDataUpload)
class PeakRecordAdmin(admin.ModelAdmin):
    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
