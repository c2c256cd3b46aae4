# Stan's log density of benchmarks/stan/theoph_1cmt.stan, and its gradient, at given points:
# the independent reference for benchmarks/bayes_nlme_posterior.py's "same posterior" check.
# The Python side writes an R source file defining `data` (as for theoph_1cmt.R) and
# `points`, a list of parameter lists (tka, tcl, tv, omega_sd, add_sd, eta_z). For each point
# this writes the log density over the constrained parameters (no Jacobian of Stan's
# transforms; up to the constants that `~` drops) and its gradient with respect to Stan's
# unconstrained parameters (log for the positive ones; eta_z column-major).
# Usage: Rscript benchmarks/stan/theoph_1cmt_logprob.R INPUT.R OUT.csv
suppressMessages(library(rstan))
args <- commandArgs(trailingOnly = TRUE)
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
source(args[1])
model <- stan_model(file.path(here, "theoph_1cmt.stan"), auto_write = FALSE)
# a stanfit object to evaluate with; one fixed iteration, nothing sampled
fit <- sampling(model, data = data, chains = 1, iter = 1, warmup = 0, refresh = 0,
                algorithm = "Fixed_param", init = list(points[[1]]), seed = 1)
rows <- lapply(points, function(p) {
  u <- unconstrain_pars(fit, p)
  lp <- log_prob(fit, u, adjust_transform = FALSE, gradient = TRUE)
  c(lp = as.numeric(lp), attr(lp, "gradient"))
})
out <- do.call(rbind, rows)
colnames(out) <- c("lp", paste0("g", seq_len(ncol(out) - 1)))
write.csv(out, args[2], row.names = FALSE)
