# Reference posterior of the lynx-hare model from rstan (Debian r-cran-rstan 2.21), for
# tests/inference/test_lynx_hare.py and benchmarks/bayes_lv.py.
# Usage: Rscript benchmarks/stan/lynx_hare.R OUT.csv [TIMING.csv]
# Needs: apt-get install r-base-core r-cran-rstan, and (Debian's BH lacks include/)
#   ln -s /usr/include /usr/lib/R/site-library/BH/include
suppressMessages(library(rstan))
args <- commandArgs(trailingOnly = TRUE)
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
df <- read.csv(file.path(here, "..", "..", "datasets", "hudson_bay_lynx_hare.csv"),
               comment.char = "#")
N <- nrow(df) - 1
data <- list(N = N, ts = 1:N, y_init = c(df$Hare[1], df$Lynx[1]),
             y = as.matrix(df[2:(N + 1), c("Hare", "Lynx")]))
t0 <- Sys.time()
model <- stan_model(file.path(here, "lynx_hare.stan"))
t_compile <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
t0 <- Sys.time()
fit <- sampling(model, data = data, chains = 4, iter = 2000, warmup = 1000, seed = 123,
                cores = 1, refresh = 0)
t_sample <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
s <- summary(fit, pars = c("theta", "z_init", "sigma"))$summary
out <- data.frame(name = rownames(s), mean = s[, "mean"], se_mean = s[, "se_mean"],
                  sd = s[, "sd"], n_eff = s[, "n_eff"], Rhat = s[, "Rhat"])
write.csv(out, args[1], row.names = FALSE)
if (length(args) > 1) {
  write.csv(data.frame(compile_s = t_compile, sampling_s = t_sample,
                       min_ess = min(s[, "n_eff"])), args[2], row.names = FALSE)
}
print(out)
cat(sprintf("compile %.1f s, sampling %.1f s\n", t_compile, t_sample))
