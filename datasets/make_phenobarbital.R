# datasets/phenobarbital.csv from R nlme's Phenobarb (Grasela & Donn 1985; Pinheiro & Bates
# 2000, section 6.4): 59 preterm neonates, IV phenobarbital, 155 concentrations.
# One row per record of Phenobarb: a dose (EVID 1, AMT = dose) or a concentration
# (EVID 0, DV = conc); CMT 1 (central); WT and APGAR (Apgar score at 5 minutes) as given.
# Run: Rscript datasets/make_phenobarbital.R   (R 4.2.2, nlme 3.1.162)
library(nlme)
d <- as.data.frame(Phenobarb)
stopifnot(!any(!is.na(d$dose) & !is.na(d$conc)), !any(is.na(d$dose) & is.na(d$conc)))
out <- data.frame(ID = as.integer(as.character(d$Subject)), TIME = d$time,
                  AMT = ifelse(is.na(d$dose), 0, d$dose),
                  DV = ifelse(is.na(d$conc), 0, d$conc),
                  MDV = ifelse(is.na(d$conc), 1, 0),
                  EVID = ifelse(is.na(d$dose), 0, 1),
                  CMT = 1, WT = d$Wt, APGAR = as.integer(as.character(d$Apgar)))
write.csv(out, "datasets/phenobarbital.csv", row.names = FALSE, quote = FALSE)
