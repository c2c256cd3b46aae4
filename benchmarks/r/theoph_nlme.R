# R's nlme on the Theophylline data: the peer for bayes_ude.nlme's FOCE.
# Model (Pinheiro & Bates 2000, sec. 8.2): conc ~ SSfol(Dose, Time, lKe, lKa, lCl),
# random effects on lKa and lCl (diagonal), Dose in mg/kg, fitted by maximum likelihood.
# Writes tests/reference/theoph_nlme.csv (estimates, log-likelihood) and the warm fit time.
# Usage: Rscript benchmarks/r/theoph_nlme.R [out.csv]
suppressMessages(library(nlme))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "tests/reference/theoph_nlme.csv"
fit_once <- function() {
  nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph,
       fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKa + lCl ~ 1),
       start = c(lKe = -2.4, lKa = 0.45, lCl = -3.2), method = "ML",
       control = nlmeControl(tolerance = 1e-8, pnlsTol = 1e-8, msTol = 1e-10))
}
fm <- fit_once()
reps <- 20
t <- system.time(for (i in seq_len(reps)) fit_once())[["elapsed"]] / reps
vc <- sqrt(diag(as.matrix(fm$modelStruct$reStruct[[1]]))) * fm$sigma  # pdMatrix is relative to sigma
res <- data.frame(
  name = c("lKe", "lKa", "lCl", "sd_lKa", "sd_lCl", "sigma", "loglik", "seconds_warm",
           "se_lKe", "se_lKa", "se_lCl"),
  value = c(fixef(fm), vc[1], vc[2], fm$sigma, as.numeric(logLik(fm)), t,
            sqrt(diag(vcov(fm))))
)
write.csv(res, out, row.names = FALSE)
print(res, digits = 10)
cat("nlme", as.character(packageVersion("nlme")), "\n")
