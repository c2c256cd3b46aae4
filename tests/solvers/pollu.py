"""POLLU: the chemical part of the air-pollution model of the Dutch National Institute of
Public Health (RIVM), 20 species and 25 reactions, t in [0, 60] minutes (Verwer 1994,
"Gauss-Seidel iteration for stiff ODEs from chemical kinetics", SIAM J. Sci. Comput. 15;
problem POLLU of the Bari test set for IVP solvers)."""

import numpy as np

RATES = np.array([0.35, 26.6, 1.23e4, 8.6e-4, 8.2e-4, 1.5e4, 1.3e-4, 2.4e4, 1.65e4, 9.0e3,
                  2.2e-2, 1.2e4, 1.88, 1.63e4, 4.8e6, 3.5e-4, 1.75e-2, 1.0e8, 4.44e11,
                  1.24e3, 2.1, 5.78, 4.74e-2, 1.78e3, 3.12])

# Reactants of each reaction r_j = k_j * prod(y[reactants]) (species numbered from 1).
REACTANTS = [(1,), (2, 4), (5, 2), (7,), (7,), (7, 6), (9,), (9, 6), (11, 2), (11, 1), (13,),
             (10, 2), (14,), (1, 6), (3,), (4,), (4,), (16,), (16,), (17, 6), (19,), (19,),
             (1, 4), (19, 1), (20,)]

# dy_i/dt = sum_j STOICH[i, j] r_j, written out per species as in the test set.
_PRODUCTION = {
    1: {-1: (1, 10, 14, 23, 24), 1: (2, 3, 9, 11, 12, 22, 25)},
    2: {-1: (2, 3, 9, 12), 1: (1, 21)},
    3: {-1: (15,), 1: (1, 17, 19, 22)},
    4: {-1: (2, 16, 17, 23), 1: (15,)},
    5: {-1: (3,), 1: (6, 7, 13, 20), 2: (4,)},
    6: {-1: (6, 8, 14, 20), 1: (3,), 2: (18,)},
    7: {-1: (4, 5, 6), 1: (13,)},
    8: {1: (4, 5, 6, 7)},
    9: {-1: (7, 8)},
    10: {-1: (12,), 1: (7, 9)},
    11: {-1: (9, 10), 1: (8, 11)},
    12: {1: (9,)},
    13: {-1: (11,), 1: (10,)},
    14: {-1: (13,), 1: (12,)},
    15: {1: (14,)},
    16: {-1: (18, 19), 1: (16,)},
    17: {-1: (20,)},
    18: {1: (20,)},
    19: {-1: (21, 22, 24), 1: (23, 25)},
    20: {-1: (25,), 1: (24,)},
}
STOICH = np.zeros((20, 25))
for _species, _terms in _PRODUCTION.items():
    for _coef, _reactions in _terms.items():
        for _r in _reactions:
            STOICH[_species - 1, _r - 1] += _coef

Y0 = np.zeros(20)
Y0[[1, 3, 6, 7, 8, 16]] = [0.2, 0.04, 0.1, 0.3, 0.01, 0.007]


def rates(y, k, xp=np):
    return k * xp.stack([xp.prod(xp.stack([y[i - 1] for i in r]), axis=0) for r in REACTANTS])


def rhs(t, y, k, xp=np):
    return xp.asarray(STOICH) @ rates(y, k, xp)
