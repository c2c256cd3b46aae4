# Reference fits of R nlme (Lindstrom-Bates, method "ML") to nlme's Phenobarb data, for
# tests/nlme/test_covariates_cli.py: one-compartment IV bolus (nlme's phenoModel), log CL and
# log V with covariate effects, diagonal random effects on both, additive error.
#   power:       lCl = a + b log(Wt / 1.3),  lV = c + d log(Wt / 1.3)
#   exponential: lCl = a + b (Wt - 1.3),     lV = c + d (Wt - 1.3)
#   categorical: as power, and lV + e [Apgar >= 5] (reference level: Apgar < 5)
# (1.3 kg is the median of the 59 subjects' weights). The power and categorical fits
# converge; for the exponential form nlme's alternation ends in a 2-cycle instead (also with
# the book's pnlsTol = 1e-6), so both ends of the cycle are written (maxIter 60 and 61):
# the reference is their midpoint, uncertain by half their distance.
# Run: Rscript tests/reference/phenobarbital_nlme.R > tests/reference/phenobarbital_nlme.csv
# (R 4.2.2, nlme 3.1.162)
library(nlme)
d <- Phenobarb
ref <- median(tapply(d$Wt, d$Subject, function(x) x[1]))
d$lWtC <- log(d$Wt / ref)
d$WtC <- d$Wt - ref
cat(sprintf("# R %s, nlme %s, reference weight %.4f kg\n", getRversion(),
            packageVersion("nlme"), ref))
cat("form,max_iter,name,value\n")
fixed <- list(power = list(lCl ~ lWtC, lV ~ lWtC), exponential = list(lCl ~ WtC, lV ~ WtC),
              categorical = list(lCl ~ lWtC, lV ~ lWtC + ApgarInd))
names_of <- list(power = c("lcl", "lcl_wt", "lv", "lv_wt"),
                 exponential = c("lcl", "lcl_wt", "lv", "lv_wt"),
                 categorical = c("lcl", "lcl_wt", "lv", "lv_wt", "lv_apgar_ge5"))
for (form in names(fixed)) {
  for (iters in c(60, 61)) {
    ctl <- nlmeControl(pnlsTol = 1e-6, maxIter = iters, msMaxIter = 200,
                       returnObject = TRUE)
    start <- c(-5.0935, 0, 0.34259, 0, if (form == "categorical") 0)
    f <- suppressWarnings(nlme(conc ~ phenoModel(Subject, time, dose, lCl, lV), data = d,
             fixed = fixed[[form]], random = pdDiag(lCl + lV ~ 1), start = start,
             na.action = NULL, naPattern = ~ !is.na(conc), control = ctl))
    sds <- as.numeric(VarCorr(f)[1:2, "StdDev"])
    values <- c(fixef(f), sds, f$sigma, as.numeric(logLik(f)))
    labels <- c(names_of[[form]], "sd_lcl", "sd_lv", "sigma", "loglik")
    for (i in seq_along(values)) cat(sprintf("%s,%d,%s,%.8f\n", form, iters, labels[i],
                                             values[i]))
  }
}
