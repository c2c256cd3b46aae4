"""bayes_ude.nn: networks, near-zero initialisation, weight flattening."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_ude import nn


def test_mlp_shapes_and_activation():
    net = nn.MLP(2, 3, widths=(5, 4), activation="rbf", key=jax.random.key(0))
    assert [lin.weight.shape for lin in net.layers] == [(5, 2), (4, 5), (3, 4)]
    x = jnp.array([0.3, -1.2])
    # Hand-computed forward pass: rbf on hidden layers, identity at the end.
    h = x
    for lin in net.layers[:-1]:
        h = jnp.exp(-((lin.weight @ h + lin.bias) ** 2))
    expected = net.layers[-1].weight @ h + net.layers[-1].bias
    np.testing.assert_allclose(net(x), expected, rtol=1e-12)
    assert nn.count_params(net) == 5 * 2 + 5 + 4 * 5 + 4 + 3 * 4 + 3
    batch = jax.vmap(net)(jnp.ones((7, 2)))
    assert batch.shape == (7, 3)


def test_mlp_refuses_a_batch_it_would_evaluate_column_wise():
    # (2, 2) into a 2-2-2 network used to run as W @ x: each column a sample, no error.
    square = nn.MLP(2, 2, widths=(2,), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(2,\).*vmap"):
        square(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="vmap"):
        square(jnp.float64(1.0))


def test_small_init_starts_near_zero_and_zero_last_at_zero():
    key = jax.random.key(1)
    small = nn.MLP(2, 2, (5, 5, 5), "tanh", key=key, init="small", small_scale=1e-4)
    weights = np.concatenate([np.ravel(x) for x in jax.tree.leaves(eqx.filter(
        small, eqx.is_inexact_array))])
    assert 0.5e-4 < weights.std() < 2e-4
    xs = jax.random.normal(key, (100, 2)) * 3
    assert float(jnp.max(jnp.abs(jax.vmap(small)(xs)))) < 1e-3
    zero = nn.MLP(2, 2, (5, 5), "gelu", key=key, init="zero_last")
    assert float(jnp.max(jnp.abs(jax.vmap(zero)(xs)))) == 0.0
    # ...but it still learns: the gradient of the output w.r.t. the last layer is not 0.
    grad = jax.grad(lambda m: m(jnp.ones(2)).sum())(zero)
    assert float(jnp.abs(grad.layers[-1].weight).sum()) > 0


def test_flatten_round_trip():
    net = nn.MLP(3, 1, (4,), "tanh", key=jax.random.key(2))
    vec, unflatten = nn.flatten(net)
    assert vec.shape == (nn.count_params(net),)
    back = unflatten(vec)
    x = jnp.array([0.1, 0.2, 0.3])
    np.testing.assert_array_equal(back(x), net(x))
    doubled = unflatten(2 * vec)
    np.testing.assert_allclose(doubled.layers[0].weight, 2 * net.layers[0].weight)
    # Works under jit and grad (optimisers and samplers use it there).
    loss = jax.jit(jax.grad(lambda v: unflatten(v)(x).sum()))
    assert loss(vec).shape == vec.shape
    with pytest.raises(ValueError, match="shape"):
        unflatten(vec[:-1])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"in_size": 0}, "in_size"),
    ({"widths": (3, 0)}, "widths"),
    ({"activation": "bogus"}, "activation"),
    ({"init": "tiny"}, "init"),
    ({"init": "small", "small_scale": 0.0}, "small_scale"),
])
def test_mlp_bad_input(kwargs, match):
    args = {"in_size": 2, "out_size": 2, "key": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        nn.MLP(**args)
