"""MILP bid optimiser solved with HiGHS.

Decision variables, per cluster c (see ``clusters``) and interval t while the cluster is plugged in:
``pp``/``pm`` grid charge / discharge power of the operating point, ``r[k]`` capacity held for product k, and the
cluster's energy relative to its start at the end of t along its low- and high-efficiency trajectories
(``elo``/``ehi``). Per product and market interval an integer ``n`` counts bid increments (and a binary ``y`` says
whether the bid is placed when the minimum size exceeds one increment), so every bid is ``increment * n`` with
``n = 0`` or ``increment * n >= minimum``.

Constraints (W, Wh; ``h`` = interval hours):
- power: operating point plus every capacity held in one direction stays within that direction's limit;
- energy: ``elo``/``ehi`` evolve with charging, discharging and the *expected* energy drift of the capacity held
  (``up_activation`` drawn through the discharge efficiency, ``down_activation`` stored through the charge
  efficiency); at the start and end of every interval, after a full activation of every up product for its
  ``sustain_h``, ``elo`` stays above the floor and the departure need; after full activation of every down product,
  ``ehi`` stays below full;
- bids: the clusters' capacity for product k in every interval of market interval m sums to ``increment * n[k, m]``;
- peak shaving: the site meter (site load + fleet operating point - capacity held for shaving) exceeds the
  threshold by at most ``X``, which costs the demand charge.

Objective: maximise forecast capacity revenue minus degradation (throughput of the operating point and of the
expected activations, $/Wh per cluster), minus the energy bought (or plus the energy sold) at the energy price,
minus the demand charge on ``X``.

Solving: the relaxation is solved by interior point + crossover (the model is highly degenerate; dual simplex took
2-4x longer), every bid is rounded down to its increment and the LP re-solved with those integers fixed (a feasible
incumbent with duals). Branch-and-bound runs only when rounding gave up more than 1 % of the bids' revenue, for at
most a quarter of ``time_limit_s``. The model is built as COO triplets (numpy, one block of rows per cluster and
constraint family) and passed to HiGHS as one CSC matrix (``passModel``); building takes ~0.1 s, solving the rest.

Offer prices: after the MILP, the integers are fixed and the LP re-solved; the dual of each bid row is the marginal
cost of holding one more W of that product then, opportunity cost of the other products included. A product's
offer price is that marginal cost ($/MW-h, never below zero): in a pay-as-clear market the bid then clears exactly
when the market pays at least what the capacity costs the fleet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp

from markets.optimiser.clusters import Cluster, build_clusters
from markets.optimiser.problem import BidProblem, BidSchedule, FloatArray, ProductSpec
from markets.optimiser.result import assemble_schedule, must_charge_load

INF = highspy.kHighsInf
KILO = 1000.0


@dataclass
class _Builder:
    """Sparse rows accumulated as COO triplets."""

    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    n_rows: int = 0

    def add(
        self,
        n: int,
        terms: Sequence[tuple[np.ndarray, np.ndarray | float]],
        lo: np.ndarray | float,
        hi: np.ndarray | float,
    ) -> np.ndarray:
        """Add ``n`` rows; each term is (column index per row, coefficient per row or scalar)."""
        row_ids = np.arange(self.n_rows, self.n_rows + n)
        for cols, coef in terms:
            self.rows.append(row_ids)
            self.cols.append(np.asarray(cols, dtype=np.int64))
            self.vals.append(np.broadcast_to(np.asarray(coef, dtype=float), (n,)).copy())
        self.lower.append(np.broadcast_to(np.asarray(lo, dtype=float), (n,)).copy())
        self.upper.append(np.broadcast_to(np.asarray(hi, dtype=float), (n,)).copy())
        self.n_rows += n
        return row_ids

    def add_sparse(self, row_cols: list[np.ndarray], row_coefs: list[np.ndarray], lo: float, hi: float) -> int:
        r = self.n_rows
        for cols, coefs in zip(row_cols, row_coefs, strict=True):
            self.rows.append(np.full(len(cols), r))
            self.cols.append(np.asarray(cols, dtype=np.int64))
            self.vals.append(np.asarray(coefs, dtype=float))
        self.lower.append(np.array([lo]))
        self.upper.append(np.array([hi]))
        self.n_rows += 1
        return r


class HighsScheduler:
    name = "highs-milp"

    def schedule(self, problem: BidProblem) -> BidSchedule:
        problem.validate()
        started = time.perf_counter()
        clusters, must = build_clusters(problem)
        model = _Model(problem, clusters, must_charge_load(problem, must))
        status, x, duals = model.solve()
        if x is None:
            raise RuntimeError(f"HiGHS found no solution ({status})")
        pp, pm, r = model.unpack(x)
        prices = model.offer_prices(duals)
        return assemble_schedule(
            problem,
            clusters,
            pp,
            pm,
            r,
            must=must,
            offer_prices=prices,
            scheduler=self.name,
            status=status,
            solve_s=time.perf_counter() - started,
        )


class _Model:
    def __init__(self, problem: BidProblem, clusters: list[Cluster], fixed_load: dict[str, FloatArray]) -> None:
        self.p = problem
        self.gap_usd = 0.0  # objective given up by rounding the bids to increments (vs the LP bound)
        self.fixed_load = fixed_load
        self.clusters = clusters
        self.products = list(problem.products)
        self.K = len(self.products)
        self.T = problem.steps
        self.h = problem.step_h
        self._layout()
        self._build()

    # --- variables ---------------------------------------------------------------------------------------------
    def _layout(self) -> None:
        self.base: list[int] = []
        col = 0
        for c in self.clusters:
            self.base.append(col)
            col += (4 + self.K) * c.avail_steps
        self.n_base = col
        self.n_col: dict[tuple[int, int], int] = {}
        self.y_col: dict[tuple[int, int], int] = {}
        self.x_col: dict[int, int] = {}
        for k, prod in enumerate(self.products):
            for m in range(len(prod.prices)):
                self.n_col[(k, m)] = col
                col += 1
                if prod.min_w > prod.increment_w:
                    self.y_col[(k, m)] = col
                    col += 1
            if prod.is_peak_shaving:
                self.x_col[k] = col
                col += 1
        self.n_vars = col

    def col(self, c: int, kind: int, t: np.ndarray | int) -> np.ndarray:
        """Column of variable ``kind`` (0 pp, 1 pm, 2 elo, 3 ehi, 4+k r[k]) of cluster c at steps t."""
        return self.base[c] + kind * self.clusters[c].avail_steps + np.asarray(t)

    def _eligible(self, k: int, c: Cluster) -> FloatArray:
        """1 where cluster c may hold product k at step t (plugged in, in the window, biddable, right node)."""
        prod = self.products[k]
        ok = np.zeros(self.T)
        if prod.node is not None and prod.node != c.node:
            return ok
        for t in range(self.p.first_biddable_step, c.avail_steps):
            ok[t] = prod.is_peak_shaving or prod.prices[t // prod.market_interval_steps] is not None
        return ok

    # --- model -------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        p, h = self.p, self.h
        cost = np.zeros(self.n_vars)
        lb = np.zeros(self.n_vars)
        ub = np.full(self.n_vars, INF)
        integrality = np.zeros(self.n_vars, dtype=np.int32)
        energy_price = np.asarray(p.energy_price if p.energy_price is not None else np.zeros(self.T)) / 1e6
        b = _Builder()
        up = np.array([prod.up for prod in self.products], dtype=float)
        down = np.array([prod.down for prod in self.products], dtype=float)
        a_up = np.array([prod.up_activation for prod in self.products])
        a_dn = np.array([prod.down_activation for prod in self.products])
        sustain = np.array([prod.sustain_h for prod in self.products])
        for ci, c in enumerate(self.clusters):
            A = c.avail_steps
            t = np.arange(A)
            pp, pm, elo, ehi = (self.col(ci, j, t) for j in range(4))
            rk = [self.col(ci, 4 + k, t) for k in range(self.K)]
            ep = energy_price[:A]
            cost[pp] = h * (ep + c.degradation_usd_per_wh)
            cost[pm] = h * (-ep + c.degradation_usd_per_wh)
            ub[pp] = c.max_charge_w
            ub[pm] = c.max_discharge_w if p.baseline_discharge else 0.0
            lb[elo] = float(np.min(c.lower_end[:A]))
            lb[ehi] = -c.capacity_wh
            ub[elo] = ub[ehi] = c.upper
            for k in range(self.K):
                cost[rk[k]] = h * (c.degradation_usd_per_wh * (a_up[k] + a_dn[k]) + ep * (a_dn[k] - a_up[k]))
                ub[rk[k]] = np.where(self._eligible(k, c)[:A] > 0, c.max_charge_w + c.max_discharge_w, 0.0)
            (ecl, ech), (edl, edh) = c.eta_c, c.eta_d
            b.add(A, [(pp, 1.0), (pm, -1.0)] + [(rk[k], down[k]) for k in range(self.K)], -INF, c.max_charge_w)
            b.add(A, [(pm, 1.0), (pp, -1.0)] + [(rk[k], up[k]) for k in range(self.K)], -INF, c.max_discharge_w)
            trajectories = [(elo, ecl, edl)]
            if c.single_trajectory:  # one efficiency: one energy trajectory serves both bounds
                lb[ehi] = ub[ehi] = 0.0
                ehi = elo
            else:
                trajectories.append((ehi, ech, edh))
            for e, eta_c, eta_d in trajectories:
                terms = [(e, 1.0), (pp, -h * eta_c), (pm, h / eta_d)]
                terms += [(rk[k], h * (a_up[k] / eta_d - a_dn[k] * eta_c)) for k in range(self.K)]
                rows = b.add(A, terms, 0.0, 0.0)
                if A > 1:  # minus the previous step's energy (the first step starts from 0)
                    b.rows.append(rows[1:])
                    b.cols.append(e[:-1])
                    b.vals.append(np.full(A - 1, -1.0))
            draw = [(rk[k], -up[k] * sustain[k] / edl) for k in range(self.K) if up[k]]
            b.add(A, [(elo, 1.0), *draw], c.lower_end[:A], INF)
            rows = b.add(A, draw, c.lower_start[:A], INF)
            if A > 1:
                b.rows.append(rows[1:])
                b.cols.append(elo[:-1])
                b.vals.append(np.ones(A - 1))
            fill = [(rk[k], down[k] * sustain[k] * ech) for k in range(self.K) if down[k]]
            b.add(A, [(ehi, 1.0), *fill], -INF, c.upper)
            rows = b.add(A, fill, -INF, c.upper)
            if A > 1:
                b.rows.append(rows[1:])
                b.cols.append(ehi[:-1])
                b.vals.append(np.ones(A - 1))
        self._bid_rows(b, cost, ub, integrality)
        self._peak_rows(b, cost)
        self.cost, self.lb, self.ub, self.integrality, self.builder = cost, lb, ub, integrality, b

    def _bid_rows(self, b: _Builder, cost: FloatArray, ub: FloatArray, integrality: np.ndarray) -> None:
        """Per product and step: the clusters' capacity sums to ``increment * n`` of its market interval."""
        h, T = self.h, self.T
        total_power = sum(c.max_charge_w + c.max_discharge_w for c in self.clusters)
        self.bid_row = np.zeros((self.K, T), dtype=np.int64)
        for k, prod in enumerate(self.products):
            steps = prod.market_interval_steps
            n_cols = np.array([self.n_col[(k, m)] for m in range(len(prod.prices))])
            integrality[n_cols] = 1
            ub[n_cols] = math.floor(total_power / prod.increment_w) + 1
            if not prod.is_peak_shaving:
                price = np.array([np.nan if x is None else x for x in prod.prices], dtype=float)
                cost[n_cols] = np.where(np.isnan(price), 0.0, -price / 1e6 * prod.increment_w * steps * h)
            for (kk, m), y in self.y_col.items():
                if kk != k:
                    continue
                n = self.n_col[(k, m)]
                integrality[y] = 1
                ub[y] = 1
                b.add_sparse([np.array([n, y])], [np.array([1.0, -prod.min_w / prod.increment_w])], 0.0, INF)
                b.add_sparse([np.array([n, y])], [np.array([1.0, -ub[n]])], -INF, 0.0)
            t = np.arange(T)
            self.bid_row[k] = b.add(T, [(n_cols[t // steps], -float(prod.increment_w))], 0.0, 0.0)
            for ci, c in enumerate(self.clusters):
                tc = np.arange(c.avail_steps)
                b.rows.append(self.bid_row[k, tc])
                b.cols.append(self.col(ci, 4 + k, tc))
                b.vals.append(np.ones(c.avail_steps))

    def _peak_rows(self, b: _Builder, cost: FloatArray) -> None:
        """Site meter (load + fleet operating point - shaving held) above the threshold by at most X (per step)."""
        for k, prod in enumerate(self.products):
            if not prod.is_peak_shaving:
                continue
            assert prod.site_load_w is not None
            x = self.x_col[k]
            cost[x] = prod.demand_charge_usd_per_w
            t = np.arange(self.p.first_biddable_step, self.T)
            fixed = sum((load for node, load in self.fixed_load.items() if prod.node in (None, node)), np.zeros(self.T))
            lo = np.asarray(prod.site_load_w, dtype=float) + fixed - prod.site_threshold_w
            rows = b.add(len(t), [(np.full(len(t), x), 1.0)], lo[t], INF)
            for ci, c in enumerate(self.clusters):
                if prod.node is not None and c.node != prod.node:
                    continue
                tc = t[t < c.avail_steps]
                for kind, coef in ((0, -1.0), (1, 1.0), (4 + k, 1.0)):
                    b.rows.append(rows[tc - self.p.first_biddable_step])
                    b.cols.append(self.col(ci, kind, tc))
                    b.vals.append(np.full(len(tc), coef))

    # --- solve -------------------------------------------------------------------------------------------------
    def _highs(self, integrality: np.ndarray, lb: FloatArray, ub: FloatArray) -> highspy.Highs:
        """The model in kW / kWh (continuous columns x 1e-3, every row x 1e-3): W-scale numbers next to $/Wh
        costs left the simplex badly scaled and slow."""
        b = self.builder
        scale = np.where(self.integrality > 0, 1.0, KILO)
        matrix = sp.csc_matrix(
            (np.concatenate(b.vals), (np.concatenate(b.rows), np.concatenate(b.cols))),
            shape=(b.n_rows, self.n_vars),
        )
        matrix = (matrix @ sp.diags(scale) / KILO).tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_vars, b.n_rows
        lp.col_cost_ = self.cost * scale
        lp.col_lower_, lp.col_upper_ = lb / scale, ub / scale
        lp.row_lower_, lp.row_upper_ = np.concatenate(b.lower) / KILO, np.concatenate(b.upper) / KILO
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = matrix.indptr
        lp.a_matrix_.index_ = matrix.indices
        lp.a_matrix_.value_ = matrix.data
        if integrality.any():
            lp.integrality_ = [highspy.HighsVarType(int(v)) for v in integrality]
        self.scale = scale
        solver = highspy.Highs()
        solver.setOptionValue("output_flag", False)
        solver.setOptionValue("time_limit", float(self.p.time_limit_s))
        solver.setOptionValue("mip_rel_gap", 1e-4)
        solver.setOptionValue("threads", 1)
        solver.passModel(lp)
        return solver

    def solve(self) -> tuple[str, FloatArray | None, FloatArray | None]:
        """LP relaxation, then every bid rounded *down* to its increment (0 below the minimum) and the LP re-solved
        warm with those integers fixed: a feasible incumbent with duals for the offer prices. With time left,
        branch-and-bound starts from that incumbent; if it finds better bids they are fixed and priced the same way.
        """
        started = time.perf_counter()
        ints = np.flatnonzero(self.integrality)
        solver = self._highs(np.zeros(0, dtype=np.int32), self.lb, self.ub)
        solver.setOptionValue("solver", "ipm")  # the relaxation is degenerate: IPM + crossover beats simplex 2-4x
        solver.run()
        if solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return solver.modelStatusToString(solver.getModelStatus()), None, None
        relaxed = np.asarray(solver.getSolution().col_value) * self.scale
        bound = float(np.dot(self.cost, relaxed))
        fixed = self._round_down(relaxed)
        status, x, duals = self._fix_and_price(solver, ints, fixed, "LP relaxation rounded down")
        if x is None:
            return status, None, None
        incumbent = float(np.dot(self.cost, x))
        self.gap_usd = incumbent - bound
        left = self.p.time_limit_s - (time.perf_counter() - started)
        # Branch-and-bound only when rounding gave up a noticeable share of what the bids earn, and for at most a
        # quarter of the time limit: the increments are small against the fleet, so rounding is usually within 1 %.
        earns = float(-np.dot(np.minimum(self.cost[ints], 0.0), x[ints]))
        if left < 1.0 or not ints.size or self.gap_usd <= 0.01 * max(earns, 1.0):
            return status, x, duals
        left = min(left, max(1.0, 0.25 * self.p.time_limit_s))
        solver.changeColsBounds(len(ints), ints, self.lb[ints], self.ub[ints])
        solver.changeColsIntegrality(len(ints), ints, np.ones(len(ints), dtype=np.uint8))
        solver.setOptionValue("time_limit", solver.getRunTime() + left)
        start = highspy.HighsSolution()
        start.col_value = list(x / self.scale)
        solver.setSolution(start)
        solver.run()
        mip = solver.getSolution()
        if mip.value_valid and float(np.dot(self.cost, np.asarray(mip.col_value) * self.scale)) < incumbent - 1e-6:
            better = np.round(np.asarray(mip.col_value)[ints])
            solver.changeColsIntegrality(len(ints), ints, np.zeros(len(ints), dtype=np.uint8))
            mip_status = solver.modelStatusToString(solver.getModelStatus())
            status2, x2, duals2 = self._fix_and_price(solver, ints, better, f"MILP ({mip_status})")
            if x2 is not None:
                return status2, x2, duals2
        return status, x, duals

    def _round_down(self, x: FloatArray) -> FloatArray:
        """Integer values for every n (and y): the relaxation floored, bids under the minimum dropped."""
        out = np.zeros(self.n_vars)
        for (k, m), col in self.n_col.items():
            prod = self.products[k]
            n = math.floor(x[col] + 1e-6)
            if n * prod.increment_w < prod.min_w:
                n = 0
            out[col] = n
            if (k, m) in self.y_col:
                out[self.y_col[(k, m)]] = 1.0 if n > 0 else 0.0
        return out

    def _fix_and_price(
        self, solver: highspy.Highs, ints: np.ndarray, values: FloatArray, label: str
    ) -> tuple[str, FloatArray | None, FloatArray | None]:
        vals = values[ints] if values.shape[0] == self.n_vars else values
        solver.changeColsBounds(len(ints), ints, vals, vals)
        # HiGHS measures time_limit on the instance's cumulative run clock: the budget is counted from now.
        solver.setOptionValue("time_limit", solver.getRunTime() + max(1.0, self.p.time_limit_s))
        solver.run()
        if solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return f"{label}: {solver.modelStatusToString(solver.getModelStatus())}", None, None
        sol = solver.getSolution()
        duals = np.asarray(sol.row_dual) / KILO if sol.dual_valid else None
        return label, np.asarray(sol.col_value) * self.scale, duals

    def unpack(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        C = len(self.clusters)
        pp, pm = np.zeros((C, self.T)), np.zeros((C, self.T))
        r = np.zeros((C, self.T, self.K))
        for ci, c in enumerate(self.clusters):
            A = c.avail_steps
            steps = np.arange(A)
            pp[ci, :A] = np.maximum(x[self.col(ci, 0, steps)], 0.0)
            pm[ci, :A] = np.maximum(x[self.col(ci, 1, steps)], 0.0)
            for k in range(self.K):
                r[ci, :A, k] = np.maximum(x[self.col(ci, 4 + k, steps)], 0.0)
        # The cluster split must sum exactly to the integer bid: rescale away solver tolerance.
        for k, prod in enumerate(self.products):
            for t in range(self.T):
                n = x[self.n_col[(k, t // prod.market_interval_steps)]]
                want = round(n) * prod.increment_w
                have = r[:, t, k].sum()
                if want == 0:
                    r[:, t, k] = 0.0
                elif have > 0:
                    r[:, t, k] *= want / have
        return pp, pm, r

    def offer_prices(self, duals: FloatArray | None) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for k, prod in enumerate(self.products):
            steps = prod.market_interval_steps
            prices: list[float | None] = []
            for m in range(len(prod.prices)):
                if prod.is_peak_shaving:
                    prices.append(prod.demand_charge_usd_per_w * 1000.0)
                elif duals is None:
                    prices.append(None)
                else:
                    marginal = float(duals[self.bid_row[k, m * steps : (m + 1) * steps]].sum())
                    # The dual prices one W *more*; at a kink it can exceed the price the bid was chosen at, and
                    # that forecast is then the offer (it clears when the market pays what the plan counted on).
                    cost = max(0.0, marginal * 1e6 / (steps * self.h))
                    forecast = prod.prices[m]
                    prices.append(cost if forecast is None else min(cost, forecast))
            out[prod.code] = prices
        return out


__all__ = ["HighsScheduler", "ProductSpec"]
