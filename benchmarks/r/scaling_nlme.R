# R's nlme on a simulated oral population of benchmarks/scaling.py: the peer for its full
# FOCEI fit. One-compartment oral model, first-order absorption, a second dose at 12 h for
# the subjects with TWICE = 1, log-normal random effects on ka, CL and V (pdDiag),
# proportional error (varPower with power fixed at 1), maximum likelihood.
# Usage: Rscript benchmarks/r/scaling_nlme.R observations.csv out.csv
# observations.csv: ID, TIME, DV, DOSE, TWICE (one row per observation).
suppressMessages(library(nlme))
args <- commandArgs(trailingOnly = TRUE)
obs <- read.csv(args[1])
obs$ID <- factor(obs$ID)
one_dose <- function(dose, t, ka, cl, v) {
  k <- cl / v
  tt <- pmax(t, 0)
  dose * ka / (v * (ka - k)) * (exp(-k * tt) - exp(-ka * tt))
}
conc <- function(DOSE, TIME, TWICE, lka, lcl, lv) {
  ka <- exp(lka); cl <- exp(lcl); v <- exp(lv)
  one_dose(DOSE, TIME, ka, cl, v) +
    ifelse(TWICE == 1 & TIME > 12, one_dose(DOSE, TIME - 12, ka, cl, v), 0)
}
grouped <- groupedData(DV ~ TIME | ID, data = obs)
seconds <- system.time(
  fm <- nlme(DV ~ conc(DOSE, TIME, TWICE, lka, lcl, lv), data = grouped,
             fixed = lka + lcl + lv ~ 1, random = pdDiag(lka + lcl + lv ~ 1),
             weights = varPower(fixed = 1), start = c(lka = 0.2, lcl = 0.8, lv = 3.2),
             method = "ML", control = nlmeControl(maxIter = 200, pnlsMaxIter = 20,
                                                  msMaxIter = 200))
)[["elapsed"]]
sd <- sqrt(diag(as.matrix(fm$modelStruct$reStruct[[1]]))) * fm$sigma  # relative to sigma
res <- data.frame(
  name = c("tka", "tcl", "tv", "omega_eta_ka", "omega_eta_cl", "omega_eta_v", "prop_sd",
           "loglik", "seconds"),
  value = c(fixef(fm), sd^2, fm$sigma, as.numeric(logLik(fm)), seconds))
write.csv(res, args[2], row.names = FALSE)
