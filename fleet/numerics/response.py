"""Closed-loop fleet tracking: how much of its command each vehicle delivers, and the fleet's residual correction.

Pure numpy, no Django, no clock reads. A car rarely delivers exactly what it is commanded at the meter: charger
efficiency and calibration, a limit of its own EVSE or BMS (SoC taper), a droop response on top, meter error.
Open-loop dispatch then misses the fleet setpoint by the weighted mean of those errors (about 3 % short on the
simulated fleet). Two corrections close the loop:

**Response gain per vehicle** ``g_i`` = metered power / commanded power, estimated by exponentially weighted least
squares through the origin::

    num_i <- (1 - a) num_i + a m c        den_i <- (1 - a) den_i + a c^2        g_i = clip(num_i / den_i, 0, 1.5)

from samples ``(c, m)`` = (command in force, metered grid power) that are *usable*: the command had settled when
the reading was taken, was not at one of the vehicle's bounds (a car held at a limit says nothing about its gain),
and was large enough (``|c| >= min_command_w``) for meter noise not to dominate. Every usable sample thus carries a
similar weight, and ``a`` sets the memory (``a = 0.1``: about ten samples, 20-30 s of regulation). A new vehicle,
session or connection starts from the prior ``g = 1`` (:func:`gain_prior`), worth one sample of ``prior_w``.
:func:`fleet.numerics.allocation.allocate` with ``gain=`` then splits the setpoint in expected delivery ``g_i p_i``,
scaling no command by more than ``1 / GAIN_MIN`` (a car delivering half its command is asked twice its share; one
delivering less, e.g. an EV that never finished its ISO 15118 handshake and sits idle at 0 W, still gets that much,
counts for what it delivers, and the others carry the rest) nor less than ``1 / GAIN_MAX``.

**Fleet correction** ``I`` (W, added to the fleet setpoint before allocation): an integral of the tracking error
(requested minus metered) over settled readings. With the gains in place the error is what they do not model --
cars at a limit delivering less than commanded, offsets -- summed over the fleet as ``residual = sum_i (m_i - g_i
c_i)``. As the correction already in force shows in the expected delivery, the error of a dispatch is
``requested - (expected + residual)`` and the update (:func:`correction_step`)::

    I <- clip(I + rate * (requested - expected - residual), -bound, +bound)

converges to ``-residual`` for ``0 < rate < 2``. It is bounded by ``bound_w`` (a fraction of the awarded capacity)
and by the fleet's feasible range (no wind-up against a saturated fleet), and it only ever moves the setpoint that
:func:`~fleet.numerics.allocation.allocate` splits: every command stays within each car's bounds (mobility floor,
EVSE and vehicle limits, departure need) whatever ``I`` and the gains are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

GAIN_MIN = 0.5  # no command is scaled up by more than 1 / GAIN_MIN (the expected delivery may be lower, down to 0)
GAIN_MAX = 1.5  # nor down by more than 1 / GAIN_MAX; no car is expected to deliver more than this per W commanded


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    """Tuning of the closed loop (defaults suit 2-s regulation updates and 1-s meter values).

    ``alpha``: weight of one usable sample in the gain's moving average. ``min_command_w``: smaller commands are not
    learnt from. ``bound_margin_w``: a command this close to a bound counts as at the bound. ``prior_w``: the prior
    ``g = 1`` weighs as one sample of this command. ``settle_s``: a reading taken less than this after the station
    answered its command still shows the previous one (control tick and ramp). ``max_age_s``: older readings are
    stale (not learnt from, not counted in the fleet's residual). ``rate`` / ``bound_fraction``: the fleet
    correction's step and its bound as a fraction of the awarded capacity.
    """

    alpha: float = 0.1
    min_command_w: float = 1_000.0
    bound_margin_w: float = 100.0
    prior_w: float = 1_000.0
    settle_s: float = 0.6
    max_age_s: float = 10.0
    rate: float = 0.5
    bound_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be within (0, 1]")
        if not 0 < self.rate < 2:
            raise ValueError("rate must be within (0, 2) for the correction to converge")
        if self.prior_w <= 0 or self.min_command_w < 0 or self.bound_margin_w < 0:
            raise ValueError("prior_w must be > 0, min_command_w and bound_margin_w >= 0")
        if self.settle_s < 0 or self.max_age_s <= 0 or self.bound_fraction < 0:
            raise ValueError("settle_s and bound_fraction must be >= 0, max_age_s > 0")


DEFAULT = TrackingSettings()


def gain_prior(n: int, settings: TrackingSettings = DEFAULT) -> tuple[FloatArray, FloatArray]:
    """(num, den) of ``n`` vehicles knowing nothing yet: ``g = 1`` with the weight of one ``prior_w`` sample."""
    weight = settings.prior_w * settings.prior_w
    return np.full(n, weight), np.full(n, weight)


def usable(
    command_w: npt.ArrayLike,
    lo_w: npt.ArrayLike,
    hi_w: npt.ArrayLike,
    settings: TrackingSettings = DEFAULT,
) -> BoolArray:
    """Which commands a gain may be learnt from: large enough and not at (within the margin of) a bound."""
    c = np.asarray(command_w, dtype=np.float64)
    lo = np.asarray(lo_w, dtype=np.float64)
    hi = np.asarray(hi_w, dtype=np.float64)
    margin = settings.bound_margin_w
    return np.asarray(
        np.isfinite(c) & (np.abs(c) >= settings.min_command_w) & (c > lo + margin) & (c < hi - margin),
        dtype=np.bool_,
    )


def gain_update(
    num: FloatArray,
    den: FloatArray,
    command_w: npt.ArrayLike,
    measured_w: npt.ArrayLike,
    mask: npt.ArrayLike,
    settings: TrackingSettings = DEFAULT,
) -> tuple[FloatArray, FloatArray]:
    """The moving sums after one sample per vehicle where ``mask`` is True (others unchanged; new arrays).

    A non-finite measurement is ignored. A measurement of the opposite sign to its command (a car discharging when
    told to charge) counts as delivering nothing: the gain's lower bound, not a negative gain.
    """
    c = np.asarray(command_w, dtype=np.float64)
    m = np.asarray(measured_w, dtype=np.float64)
    take = np.asarray(mask, dtype=np.bool_) & np.isfinite(c) & np.isfinite(m)
    product = np.where(take, np.maximum(m * c, 0.0), 0.0)
    square = np.where(take, c * c, 0.0)
    keep = np.where(take, 1.0 - settings.alpha, 1.0)
    return num * keep + settings.alpha * product, den * keep + settings.alpha * square


def gain_estimate(num: FloatArray, den: FloatArray) -> FloatArray:
    """Each vehicle's response gain, within ``[0, GAIN_MAX]`` (1 where nothing is known)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(den > 0, num / den, 1.0)
    g = np.where(np.isfinite(g), g, 1.0)
    return np.clip(g, 0.0, GAIN_MAX)


def correction_step(
    correction_w: float,
    *,
    requested_w: float,
    expected_w: float,
    residual_w: float,
    bound_w: float,
    settings: TrackingSettings = DEFAULT,
) -> float:
    """The fleet correction after one dispatch (module docstring): one integral step on its tracking error.

    ``requested_w``: the fleet setpoint before correction; ``expected_w``: the expected delivery of the commands
    sent for it (correction included); ``residual_w``: the fleet's metered minus expected delivery over fresh
    settled readings. The result lies within ``±bound_w``; a non-finite error leaves the correction as it was.
    """
    error = requested_w - expected_w - residual_w
    bound = max(float(bound_w), 0.0)
    step = correction_w + settings.rate * error if np.isfinite(error) else correction_w
    return float(min(max(step, -bound), bound))


def correction_clip(correction_w: float, *, setpoint_w: float, min_w: float, max_w: float) -> float:
    """The correction, limited so that ``setpoint + correction`` stays within the fleet's range ``[min_w, max_w]``
    (expected delivery) where the setpoint itself does; beyond it, the correction may only pull back towards it.
    This is the anti-wind-up: a saturated fleet does not accumulate a correction it cannot deliver."""
    low, high = min_w - setpoint_w, max_w - setpoint_w
    if low > high:
        return 0.0
    return float(min(max(correction_w, min(low, 0.0)), max(high, 0.0)))
