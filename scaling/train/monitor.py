"""The divergence monitor: when a run has diverged, and why (`DivergenceMonitor`, `Diverged`)."""

from __future__ import annotations

import math

from scaling.config import Config


class Diverged(Exception):
    """Raised in the step loop once the monitor finds the run diverged; the reason is its text."""


class DivergenceMonitor:
    """Decides when a run has diverged, and says why.

    Three rules, each recorded as `divergence_reason`:
      - the training loss is NaN or infinite;
      - the training loss exceeds `train.divergence_factor` x the first step's loss;
      - a sustained rise: the smoothed training loss (an exponential moving average over the
        logged steps, weight 0.2 on the newest) stays more than `train.divergence_rise` (a
        fraction) above its running minimum for `patience` consecutive logged steps, where
        patience = max(5, 10 % of the run's logged steps). This catches a run that blows up
        to a plateau, which the first two rules miss. It is evaluated on logged steps only,
        so a resumed run, which rebuilds it from metrics.jsonl, decides exactly as an
        uninterrupted one.
    At the end of a run, an eval loss more than `divergence_rise` above the best eval loss of
    the run (on the same eval set) marks it diverged too.
    """

    ALPHA = 0.2

    def __init__(self, cfg: Config):
        t = cfg.train
        self.factor, self.rise = t.divergence_factor, t.divergence_rise
        n_logged = t.steps // t.log_every + 1
        self.patience = max(5, n_logged // 10)
        self.initial: float | None = None
        self.ema: float | None = None
        self.low = math.inf
        self.above = 0
        self.reason: str | None = None

    def observe(self, step: int, loss: float, logged: bool) -> str | None:
        """Feed one step's training loss; returns (and keeps) a reason once diverged."""
        if self.initial is None:
            self.initial = loss
        if not math.isfinite(loss):
            self.reason = f"training loss {loss} at step {step}"
        elif loss > self.factor * self.initial:
            self.reason = (f"training loss {loss:.4g} at step {step} exceeds "
                           f"{self.factor:g} x the first step's {self.initial:.4g}")
        elif logged:
            self._smooth(step, loss)
        return self.reason

    def _smooth(self, step: int, loss: float) -> None:
        self.ema = loss if self.ema is None else self.ALPHA * loss + (1 - self.ALPHA) * self.ema
        self.low = min(self.low, self.ema)
        if self.ema > (1 + self.rise) * self.low:
            self.above += 1
            if self.above >= self.patience:
                self.reason = (f"smoothed training loss {self.ema:.4g} at step {step} has stayed "
                               f"more than {self.rise:.0%} above its running minimum "
                               f"{self.low:.4g} for {self.above} logged steps")
        else:
            self.above = 0

    def check_final_eval(self, final: float | None, best_curve: float | None) -> str | None:
        """`final`: the final eval's loss on the curve evals' windows (the same windows as
        `best_curve`, the best curve eval), None when it is not known."""
        if (self.reason is None and best_curve is not None and final is not None
                and final > (1 + self.rise) * best_curve):
            self.reason = (f"final eval loss {final:.4g} on the curve-eval windows is more "
                           f"than {self.rise:.0%} above the run's best {best_curve:.4g} on them")
        return self.reason
