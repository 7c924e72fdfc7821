"""Bidding pages: thin views calling one service each.

Who: operators and the bidding desk (``markets.bid_admin``) every portfolio; a bidding admin the ``fleet-<id>``
portfolios of their organisations (another portfolio's bid: 404); anyone without a bidding role: 403.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import TypeVar

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from markets.models import Bid, BidProposal, MarketOperator
from markets.selectors import bid_portfolios_for, bids_for, bids_in_window, in_portfolios, may_bid
from markets.services.bids import MarketError, bids_transition, gate_closure
from markets.services.bids import bid_edit as bid_edit_service
from markets.services.proposals import delivery_window

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


def _day(request: HttpRequest) -> date:
    try:
        return date.fromisoformat(request.GET.get("day", ""))
    except ValueError:
        return (timezone.now() + timedelta(days=1)).date()


@login_required
@bidder_required
def bidding_day(request: HttpRequest) -> HttpResponse:
    operator = get_object_or_404(MarketOperator, code=request.GET.get("operator", "pjm"))
    day = _day(request)
    start, end = delivery_window(operator, day)
    portfolios = bid_portfolios_for(request.user)
    bids = list(bids_in_window(start=start, end=end, portfolios=portfolios))
    proposals = BidProposal.objects.filter(operator=operator, horizon_start=start).order_by("portfolio")
    proposal = in_portfolios(proposals, portfolios).first()
    chart = _chart(bids, proposal)
    awards = [b for b in bids if hasattr(b, "award")]
    return render(
        request,
        "markets/bidding_day.html",
        {
            "operator": operator,
            "operators": MarketOperator.objects.filter(active=True),
            "day": day,
            "bids": bids,
            "proposal": proposal,
            "chart": chart,  # handed to the page with json_script, never |safe
            "awards": [(b, b.award, max(0, b.quantity_w - b.award.awarded_w)) for b in awards],
            "gate_closure": gate_closure(operator, start),
        },
    )


def _chart(bids: list[Bid], proposal: BidProposal | None) -> dict[str, object]:
    """Plotly traces: bids per product (bars), the fleet's up/down envelope, and offer / forecast prices."""
    traces: list[dict[str, object]] = []
    by_product: dict[str, list[Bid]] = {}
    for b in bids:
        by_product.setdefault(str(b.product), []).append(b)
    for name, rows in by_product.items():
        x = [b.interval_start.isoformat() for b in rows]
        traces.append({"type": "bar", "name": f"{name} bid (kW)", "x": x, "y": [b.quantity_w / 1000 for b in rows]})
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "yaxis": "y2",
                "name": f"{name} forecast price",
                "x": x,
                "y": [float(b.forecast_price) if b.forecast_price is not None else None for b in rows],
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "yaxis": "y2",
                "name": f"{name} offer price",
                "x": x,
                "y": [float(b.price) for b in rows],
            }
        )
    if proposal and proposal.inputs.get("envelope"):
        env = proposal.inputs["envelope"]
        start = datetime.fromisoformat(proposal.inputs["start"])
        step = timedelta(seconds=proposal.inputs["step_s"])
        x = [(start + k * step).isoformat() for k in range(len(env["up_w"]))]
        for key, label in (("up_w", "fleet up headroom (kW)"), ("down_w", "fleet down headroom (kW)")):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "line": {"dash": "dot"},
                    "name": label,
                    "x": x,
                    "y": [v / 1000 for v in env[key]],
                }
            )
    return {
        "data": traces,
        "layout": {
            "barmode": "group",
            "yaxis": {"title": "kW"},
            "yaxis2": {"title": "price", "overlaying": "y", "side": "right"},
            "legend": {"orientation": "h"},
            "margin": {"t": 20},
        },
    }


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
    url = request.POST.get("next") or "/markets/bidding/"
    if not url.startswith("/"):
        url = "/markets/bidding/"
    response = redirect(url)
    if status != 302:
        response.status_code = 303 if status < 400 else status
        if status >= 400:
            return HttpResponse("\n".join(str(m) for m in messages.get_messages(request)) or "refused", status=status)
    return response
