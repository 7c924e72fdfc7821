"""Bidding pages: thin views calling one service each.

Who: operators and the bidding desk (``markets.bid_admin``) every portfolio; a bidding admin the ``fleet-<id>``
portfolios of their organisations (another portfolio's bid: 404); anyone without a bidding role: 403.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial, wraps
from typing import TypeVar

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from markets.charts import bidding_chart, bidding_csv
from markets.models import Bid, MarketOperator
from markets.selectors import bid_portfolios_for, bidding_day, bids_for, may_bid, operator_days, operator_today
from markets.services.bids import EDITABLE, MarketError, bids_transition
from markets.services.bids import bid_edit as bid_edit_service
from markets.services.proposals import proposal_prepare
from markets.tasks import run_proposal

DESK_PORTFOLIO = "all"  # what the bidding desk (every portfolio) proposes for: the whole fleet, as the scheduler does

V = TypeVar("V", bound=Callable[..., HttpResponse])


class AuthenticatedHttpRequest(HttpRequest):
    """A request behind ``login_required``: its user is a signed-in ``User``, never ``AnonymousUser``."""

    user: User


def bidder_required(view: V) -> V:
    """403 for a signed-in user without a bidding role (``markets.selectors.may_bid``)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not may_bid(request.user):
            raise PermissionDenied("the bidding pages are for operators and bidding admins")
        return view(request, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


INDEX_DAYS_AHEAD = 2  # the index lists each operator's delivery days from this many ahead of today ...
INDEX_DAYS_BACK = 6  # ... to this many before (the last week's results)


def _operator(code: str) -> MarketOperator:
    return get_object_or_404(MarketOperator, code=code)


def _day_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Http404("a delivery day is YYYY-MM-DD") from None


@login_required
@bidder_required
def markets_index(request: HttpRequest) -> HttpResponse:
    """Every active market operator with its delivery days around today: gate state, the user's bids, awards and
    settled revenue."""
    now = timezone.now()
    sections = []
    for operator in MarketOperator.objects.filter(active=True).prefetch_related("products"):
        today = operator_today(operator=operator, now=now)
        days = [today + timedelta(days=k) for k in range(INDEX_DAYS_AHEAD, -INDEX_DAYS_BACK - 1, -1)]
        sections.append((operator, operator_days(operator=operator, days=days, user=request.user, now=now)))
    return render(request, "markets/index.html", {"sections": sections, "now": now})


@login_required
@bidder_required
def bidding_legacy(request: HttpRequest) -> HttpResponse:
    """The old address (``/markets/bidding/?operator=&day=``): the operator's day page."""
    operator = _operator(request.GET.get("operator", "pjm"))
    try:
        day = date.fromisoformat(request.GET.get("day", ""))
    except ValueError:
        day = operator_today(operator=operator, now=timezone.now()) + timedelta(days=1)
    return redirect("markets-day", operator=operator.code, day=day.isoformat())


@login_required
@bidder_required
def bidding_day_page(request: HttpRequest, operator: str, day: str) -> HttpResponse:
    market = _operator(operator)
    now = timezone.now()
    data = bidding_day(operator=market, day=_day_of(day), user=request.user, now=now)
    portfolios = sorted(data.portfolios) if data.portfolios is not None else [DESK_PORTFOLIO]
    return render(
        request,
        "markets/day.html",
        {
            "d": data,
            "operator": market,
            "operators": MarketOperator.objects.filter(active=True),
            "chart": bidding_chart(data),  # handed to the page with json_script, never |safe
            "previous_day": data.delivery.day - timedelta(days=1),
            "next_day": data.delivery.day + timedelta(days=1),
            "portfolios": portfolios,
            "editable": [o for o in data.outcomes if o.bid.status in EDITABLE],
            "mw_places": max(0, 7 - len(str(market.bid_increment_w))),  # MW to the bid increment: 100 kW -> 0.1
            "now": now,
        },
    )


@login_required
@bidder_required
def bidding_day_csv(request: HttpRequest, operator: str, day: str) -> HttpResponse:
    """The day's bids as the page's table lists them (``markets.charts.bidding_csv``)."""
    market = _operator(operator)
    data = bidding_day(operator=market, day=_day_of(day), user=request.user, now=timezone.now())
    response = HttpResponse(bidding_csv(data), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="bids-{market.code}-{data.delivery.day:%Y-%m-%d}.csv"'
    return response


@login_required
@bidder_required
@require_POST
def proposal_prepare_view(request: AuthenticatedHttpRequest, operator: str, day: str) -> HttpResponse:
    """Ask the optimiser for the day's bids now (refused, with the reason, once the gate closed or the day began)."""
    market = _operator(operator)
    delivery = _day_of(day)
    portfolios = bid_portfolios_for(request.user)
    portfolio = request.POST.get("portfolio") or DESK_PORTFOLIO
    if portfolios is not None and portfolio not in portfolios:
        raise Http404("no such portfolio")  # another organisation's fleet: as if it did not exist
    try:
        proposal = proposal_prepare(operator=market, portfolio=portfolio, day=delivery, now=timezone.now())
    except MarketError as exc:
        messages.error(request, f"Not proposed: {exc}")
        return _back(request, 409)
    transaction.on_commit(partial(run_proposal.delay, proposal.pk))
    messages.success(request, f"Proposal for {delivery:%Y-%m-%d} ({portfolio}) requested; its bids appear once done.")
    return _back(request)


@login_required
@bidder_required
@require_POST
def bid_edit(request: AuthenticatedHttpRequest, bid_id: int) -> HttpResponse:
    get_object_or_404(bids_for(request.user), pk=bid_id)  # another portfolio's bid: 404
    try:
        quantity_kw = Decimal(request.POST["quantity_kw"])
        price = Decimal(request.POST["price"])
        version = int(request.POST["version"])
        bid_edit_service(
            bid_id=bid_id, quantity_w=int(quantity_kw * 1000), price=price, version=version, actor=request.user
        )
        messages.success(request, "Bid updated (back to draft).")
    except (KeyError, ValueError, InvalidOperation):
        messages.error(request, "quantity, price and version are required numbers")
        return _back(request, 400)
    except MarketError as exc:
        messages.error(request, str(exc))
        return _back(request, 409)
    return _back(request)


@login_required
@bidder_required
@require_POST
def bids_action(request: AuthenticatedHttpRequest) -> HttpResponse:
    target = {"approve": Bid.Status.APPROVED, "submit": Bid.Status.SUBMITTED, "reopen": Bid.Status.DRAFT}.get(
        request.POST.get("action", "")
    )
    ids = [int(i) for i in request.POST.getlist("bid") if i.isdigit()]
    if target is None or not ids:
        messages.error(request, "choose bids and an action")
        return _back(request, 400)
    if bids_for(request.user).filter(pk__in=ids).count() < len(set(ids)):
        raise Http404("no such bid")  # another portfolio's bid (or none): nothing is changed
    refused = bids_transition(bid_ids=ids, to_status=target, actor=request.user)
    for reason in refused:
        messages.error(request, reason)
    if len(refused) < len(ids):
        messages.success(request, f"{len(ids) - len(refused)} bid(s) now {target}.")
    return _back(request)


def _back(request: HttpRequest, status: int = 302) -> HttpResponse:
    """Back to the page the form was on (``next``, same site only), the messages shown there; a refusal is a page of
    its own with its status (400, 409) and the reasons, linking back."""
    url = request.POST.get("next") or "/markets/"
    if not url.startswith("/") or url.startswith("//"):
        url = "/markets/"
    if status >= 400:
        reasons = [str(m) for m in messages.get_messages(request)] or ["refused"]
        return render(request, "markets/refused.html", {"reasons": reasons, "back": url}, status=status)
    return redirect(url)
