"""The fits: scaling laws with intervals, each estimator in its own file.

    powerlaw.py        single-variable power laws L(x) = E + (x_c / x)^alpha
    frontier.py        the compute-efficient frontier and Chinchilla's Approach 1
    isoflop.py         Approach 2: IsoFLOP minima -> N_opt ∝ C^a, D_opt ∝ C^b
    isoflop_minima.py  one budget's minimum (parabola, local fit, interpolation)
    isoflop_choice.py  `--estimator auto`: which minimum estimator suits the data
    chinchilla.py      Approach 3 (parametric L(N, D)) and Kaplan's joint L(N, D)
    laws.py            the law forms in log space: forward pass and gradient
    multistart.py      robust objectives and the batched multi-start fitter
    _lbfgs.py          batched L-BFGS (numpy), thousands of starts in lock-step
    ndlaws.py          the laws of L(N, D) offered for prediction, and `auto`
    prediction.py      predict_loss(N, D): bootstrap + misspecification interval
    predict.py         compute-optimal N, D and loss for budgets
    backtest.py        fit the cheap runs, predict the expensive ones
    pareto.py          the lower-left Pareto front of (x, loss) rows
    critical_batch.py  S(B) = S_min + E_min / B per target loss, B_crit, B_crit(L) (McCandlish)
"""
