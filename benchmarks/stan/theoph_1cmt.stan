// Theophylline, one-compartment model with first-order absorption, closed form: the same
// Bayesian model as bayes_ude.nlme.numpyro_model(builtin_model("oral1cmt", pop), pop)
// (benchmarks/bayes_nlme.py). Stan 2.21 syntax (Debian's rstan).
//
//   ka_i, cl_i, v_i = exp(theta + eta_i),  eta_i = eta_z_i .* omega_sd  (non-centred)
//   C(t) = F D ka / (V (ka - k)) (exp(-k tau) - exp(-ka tau)),  k = cl / v,  F = 1,
//   tau = t - dose time (C = 0 for tau <= 0: a sample at the dose time sees no drug)
//   dv ~ normal(C, add_sd)
// Priors: theta ~ normal(initial value, theta_scale), omega_sd ~ half-normal(omega_scale)
//   or half-Cauchy(omega_scale) (omega_cauchy = 1), add_sd ~ half-normal(5 x initial add_sd), eta_z ~ normal(0, 1).
data {
  int<lower = 1> N;                  // subjects
  int<lower = 1> M;                  // observations (all subjects)
  int<lower = 1, upper = N> subj[M];
  vector[M] time;
  vector[M] dv;
  vector[N] dose_time;               // one oral dose (depot) per subject
  vector[N] dose_amt;
  vector[3] theta_init;              // log ka, log cl, log v
  real<lower = 0> theta_scale;
  real<lower = 0> add_sd_scale;
  int<lower = 0, upper = 1> omega_cauchy;  // 0: half-normal, 1: half-Cauchy
  real<lower = 0> omega_scale;
}
parameters {
  real tka;
  real tcl;
  real tv;
  vector<lower = 0>[3] omega_sd;
  real<lower = 0> add_sd;
  matrix[N, 3] eta_z;
}
transformed parameters {
  matrix[N, 3] eta = eta_z * diag_matrix(omega_sd);
}
model {
  vector[N] ka = exp(tka + col(eta, 1));
  vector[N] cl = exp(tcl + col(eta, 2));
  vector[N] v = exp(tv + col(eta, 3));
  vector[N] k = cl ./ v;
  vector[N] a = dose_amt .* ka ./ (v .* (ka - k));
  vector[M] conc;
  for (m in 1:M) {
    int i = subj[m];
    real tau = time[m] - dose_time[i];
    conc[m] = tau > 0 ? a[i] * (exp(-k[i] * tau) - exp(-ka[i] * tau)) : 0;
  }
  tka ~ normal(theta_init[1], theta_scale);
  tcl ~ normal(theta_init[2], theta_scale);
  tv ~ normal(theta_init[3], theta_scale);
  if (omega_cauchy)
    omega_sd ~ cauchy(0, omega_scale);
  else
    omega_sd ~ normal(0, omega_scale);
  add_sd ~ normal(0, add_sd_scale);
  to_vector(eta_z) ~ std_normal();
  dv ~ normal(conc, add_sd);
}
