# rstan side of benchmarks/bayes_nlme.py: compile benchmarks/stan/theoph_1cmt.stan and run
# 4 chains (sequentially, one core) on the data and initial values that the Python side
# wrote as an R source file (defines `data`, `inits`, `warmup`, `draws`, `seed`, `metric`).
# Usage: Rscript benchmarks/stan/theoph_1cmt.R INPUT.R DRAWS.csv TIMING.csv
# Needs: apt-get install r-base-core r-cran-rstan (see lynx_hare.R for the BH include link)
suppressMessages(library(rstan))
args <- commandArgs(trailingOnly = TRUE)
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
source(args[1])
t0 <- Sys.time()
model <- stan_model(file.path(here, "theoph_1cmt.stan"), auto_write = FALSE)
t_compile <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
t0 <- Sys.time()
fit <- sampling(model, data = data, init = inits, chains = length(inits),
                iter = warmup + draws, warmup = warmup, seed = seed, cores = 1, refresh = 0,
                pars = c("tka", "tcl", "tv", "omega_sd", "add_sd", "eta"),
                control = list(metric = metric))
t_run <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
el <- get_elapsed_time(fit)
sp <- get_sampler_params(fit, inc_warmup = FALSE)
a <- as.array(fit)  # iterations x chains x parameters
out <- do.call(rbind, lapply(seq_len(dim(a)[2]), function(ch) {
  d <- as.data.frame(a[, ch, ])
  d$n_leapfrog <- sp[[ch]][, "n_leapfrog__"]
  d$divergent <- sp[[ch]][, "divergent__"]
  cbind(chain = ch - 1, draw = seq_len(nrow(d)) - 1, d)
}))
write.csv(out, args[2], row.names = FALSE)
write.csv(data.frame(compile_s = t_compile, run_s = t_run, warmup_s = sum(el[, "warmup"]),
                     sampling_s = sum(el[, "sample"])), args[3], row.names = FALSE)
cat(sprintf("compile %.1f s, warmup %.1f s, sampling %.1f s (sum over chains), run %.1f s\n",
            t_compile, sum(el[, "warmup"]), sum(el[, "sample"]), t_run))
