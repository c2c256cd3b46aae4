"""ArviZ conversion: arrays with leading (chain, draw) axes into named groups, and groups
added later without clobbering what is there."""

import numpy as np
import pytest

from bayes_ude import inference


def test_to_inference_data_and_adding_groups():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(2, 5, 3))
    idata = inference.to_inference_data(
        {"theta": theta}, observed_data={"y": np.arange(4.0)}, dims={"theta": ["k"]},
        coords={"k": ["a", "b", "c"]})
    assert idata.posterior["theta"].dims == ("chain", "draw", "k")
    np.testing.assert_array_equal(idata.posterior["theta"].sel(k="b"), theta[..., 1])

    dv = rng.normal(size=(2, 5, 3, 4))
    obs = rng.normal(size=(3, 4))
    inference.add_to_inference_data(
        idata, posterior_predictive={"dv": dv}, observed_data={"dv": obs},
        dims={"dv": ["subject", "record"]}, coords={"subject": ["s1", "s2", "s3"]})
    # a new group, and a variable joined to the existing observed_data (y kept)
    np.testing.assert_array_equal(idata.posterior_predictive["dv"].sel(subject="s2"), dv[:, :, 1])
    np.testing.assert_array_equal(idata.observed_data["dv"], obs)
    np.testing.assert_array_equal(idata.observed_data["y"], np.arange(4.0))
    with pytest.raises(ValueError, match=r"observed_data group already has \['dv'\]"):
        inference.add_to_inference_data(idata, observed_data={"dv": obs},
                                        dims={"dv": ["subject", "record"]})
    # arrays without (chain, draw) axes, or groups that disagree on them, were read as
    # one chain or as other chains (a (draws, k) array: draws read as chains)
    with pytest.raises(ValueError, match=r"posterior\['mu'\] has shape \(500,\)"):
        inference.to_inference_data({"mu": np.zeros(500)})
    with pytest.raises(ValueError, match="the \\(chain, draw\\) axes differ"):
        inference.to_inference_data({"mu": np.zeros((4, 500))},
                                    sample_stats={"lp": np.zeros((4, 400))})
    with pytest.raises(ValueError, match="the posterior's are \\(2, 5\\)"):
        inference.add_to_inference_data(idata, posterior_predictive={"z": np.zeros((5, 2))})
