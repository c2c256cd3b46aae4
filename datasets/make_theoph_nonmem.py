"""Build `theophylline.csv` from `theoph.csv` (run from anywhere: paths are relative to
this file). Deterministic; the output is committed and checked by the test suite."""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def build() -> pd.DataFrame:
    raw = pd.read_csv(HERE / "theoph.csv")
    rows = []
    for subject, g in raw.groupby("Subject", sort=False):
        wt, dose = float(g["Wt"].iloc[0]), float(g["Dose"].iloc[0])
        # One oral dose at time 0 into the depot (CMT 1): AMT in mg = mg/kg x kg.
        rows.append({"ID": subject, "TIME": 0.0, "DV": np.nan, "AMT": round(dose * wt, 4),
                     "EVID": 1, "MDV": 1, "CMT": 1, "WT": wt, "DOSE": dose})
        for _, r in g.iterrows():  # every concentration, the time-0 ones included
            rows.append({"ID": subject, "TIME": float(r["Time"]), "DV": float(r["conc"]),
                         "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2, "WT": wt, "DOSE": dose})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    build().to_csv(HERE / "theophylline.csv", index=False, na_rep=".")
