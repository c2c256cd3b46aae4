"""The chemical reaction neural network (CRNN) layer: a network whose weights are a
reaction mechanism (Ji & Deng 2021, "Autonomous discovery of unknown reaction pathways from
data by chemical reaction neural network", J. Phys. Chem. A 125, 1082).

For candidate reaction ``j`` and species ``i``:

* output weights ``nu[j, i]``: the stoichiometric coefficients (negative: consumed,
  positive: produced);
* input weights: the reaction orders. *Tied* (the default, mass action):
  ``order[j, i] = clip(-nu[j, i], 0, order_max)``, so a reactant enters the rate law
  with its stoichiometric coefficient and a product not at all; or *free* (a separate
  parameter, clipped to ``[0, order_max]``);
* bias: the log rate constant, ``ln k_j`` (always positive ``k``: it is parameterised by
  its logarithm). With Arrhenius kinetics and temperature ``T`` (the ``args`` of the
  vector field), ``ln k_j(T) = ln A_j + b_j ln T - Ea_j / (R T)``.

Then ``r_j = exp(sum_i order[j, i] ln c_i + ln k_j)`` and ``dc/dt = nu^T r``.

The concentration inside the logarithm is clipped to ``[conc_min, conc_max]``: a species
that is absent (``c = 0``, or a tiny negative value from the integrator's round-off) gives
``ln conc_min`` instead of ``-inf``/NaN, so a reaction that needs it runs at the rate
``k conc_min ** order`` instead of poisoning the solve. That rate is small but not zero:
an exhausted reactant keeps being consumed, and for a fractional order or a fast reaction
it shows (half order, ``k = 1``: 1e-3 per time unit, A at -0.098 after 100 time units;
``A -> B`` at ``k = 1e3``: A at -0.1, the products 0.1 too high). :func:`simulate` warns
when its concentrations go negative. The clip stays, as in Ji & Deng: training needs it.
A trained network carries small spurious coefficients on species that are absent at the
start, and any rule that stops a reaction when such a species is gone (a hard stop at
``c <= 0``, or the rate ramped to 0 below ``conc_min``) switched those reactions off,
and with them their gradients: on the classic 4-reaction case the ramp trained to
``1.59A -> 0.58B`` instead of ``2A -> B``, and the hard stop made the solves chatter
(142 s and failed solves against 38 s).

A pruning ``mask`` (boolean, not a trained parameter) marks the weights that are kept;
pruned weights are exactly zero in every use.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

#: Molar gas constant in kJ / (mol K): activation energies are in kJ / mol.
GAS_CONSTANT = 8.314462618e-3

ORDERS = ("tied", "free")


def _species_names(n_species: int, species: Sequence[str] | None) -> tuple[str, ...]:
    if species is None:
        if n_species <= 26:
            return tuple(chr(ord("A") + i) for i in range(n_species))
        return tuple(f"S{i}" for i in range(n_species))
    species = tuple(str(s) for s in species)
    if len(species) != n_species:
        raise ValueError(f"species must name n_species={n_species} species, got "
                         f"{len(species)}: {species}")
    if len(set(species)) != len(species):
        raise ValueError(f"species names must be distinct, got {species}")
    return species


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class CRNN(eqx.Module):
    """A chemical reaction neural network: ``dc/dt = nu^T r(c)``, mass-action rates.

    Parameters
    ----------
    n_species : number of chemical species (the state dimension).
    n_reactions : number of candidate reactions.
    key : PRNG key for the initial weights.
    species : species names for printing (default ``A, B, C, ...``).
    orders : ``"tied"`` (reaction orders are the reactants' stoichiometric coefficients,
        ``clip(-nu, 0, order_max)``) or ``"free"`` (separately learned orders).
    arrhenius : if True, ``ln k = ln A + b ln T - Ea / (R T)`` with ``T`` passed as the
        vector field's ``args`` (one temperature per experiment, in kelvin; ``Ea`` in
        kJ/mol); otherwise ``ln k`` is one number per reaction and ``args`` is unused.
    init_scale : standard deviation of the initial stoichiometric coefficients. The
        default 0.1 starts every candidate as a weak, nearly neutral reaction that
        training grows into whatever the data need (as in Ji & Deng's code).
    init_log_rate : initial ``ln k`` (or ``ln A``) of every reaction; the default
        ``ln 0.1`` is a rate whose time scale (10 time units) is that of typical data.
    order_max : upper clip of the reaction orders (2.5, as in Ji & Deng: no elementary
        reaction has a higher order, and the clip keeps rates finite while training).
    conc_min, conc_max : clip of the concentration inside the logarithm (see the module
        notes), in the data's units. ``conc_min = 1e-6`` is far below the measured
        concentrations of typical (O(1)) data, yet it bounds the slope of ``c ** order``
        near ``c = 0`` (``order * conc_min ** (order - 1)``): with a weak order such as
        0.1, as a CRNN has early in training, ``1e-12`` gives slopes near ``1e10`` and
        an explicit solver stalls (measured: the solve of a random initial network
        fails at ``1e-8`` and succeeds at ``1e-6``). Rescale data far from O(1) first.

    Attributes
    ----------
    stoichiometry : ``nu``, shape ``(n_reactions, n_species)``.
    log_rate : ``ln k`` (or ``ln A`` with Arrhenius), shape ``(n_reactions,)``.
    free_orders : the free reaction orders (``orders="free"``) or ``None``.
    temperature_exponent, activation_energy : Arrhenius ``b`` and ``Ea`` or ``None``.
    mask : boolean ``(n_reactions, n_species)``: stoichiometric coefficients kept (not
        pruned); with tied orders it prunes the orders too.
    order_mask : free orders kept (``orders="free"``) or ``None``.
    """

    stoichiometry: Float[Array, "n_reactions n_species"]
    log_rate: Float[Array, " n_reactions"]
    free_orders: Float[Array, "n_reactions n_species"] | None
    temperature_exponent: Float[Array, " n_reactions"] | None
    activation_energy: Float[Array, " n_reactions"] | None
    mask: Bool[Array, "n_reactions n_species"]
    order_mask: Bool[Array, "n_reactions n_species"] | None
    species: tuple[str, ...] = eqx.field(static=True)
    orders: str = eqx.field(static=True)
    order_max: float = eqx.field(static=True)
    conc_min: float = eqx.field(static=True)
    conc_max: float = eqx.field(static=True)

    def __init__(
        self,
        n_species: int,
        n_reactions: int,
        *,
        key: jax.Array,
        species: Sequence[str] | None = None,
        orders: str = "tied",
        arrhenius: bool = False,
        init_scale: float = 0.1,
        init_log_rate: float = float(np.log(0.1)),
        order_max: float = 2.5,
        conc_min: float = 1e-6,
        conc_max: float = 1e6,
    ):
        n_species = _positive_int("n_species", n_species)
        n_reactions = _positive_int("n_reactions", n_reactions)
        if orders not in ORDERS:
            raise ValueError(f"orders must be one of {ORDERS}, got {orders!r}")
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        if not order_max > 0:
            raise ValueError(f"order_max must be positive, got {order_max!r}")
        if not 0 < conc_min < conc_max:
            raise ValueError(f"need 0 < conc_min < conc_max, got {conc_min!r}, {conc_max!r}")
        k_nu, k_order = jax.random.split(key)
        dtype = jnp.result_type(float)
        shape = (n_reactions, n_species)
        self.stoichiometry = init_scale * jax.random.normal(k_nu, shape, dtype)
        self.log_rate = jnp.full((n_reactions,), float(init_log_rate), dtype)
        # Free orders start at 1/2 +- noise: every species mildly in every rate law.
        self.free_orders = (None if orders == "tied" else
                            0.5 + init_scale * jax.random.normal(k_order, shape, dtype))
        self.temperature_exponent = jnp.zeros((n_reactions,), dtype) if arrhenius else None
        self.activation_energy = jnp.zeros((n_reactions,), dtype) if arrhenius else None
        self.mask = jnp.ones(shape, bool)
        self.order_mask = None if orders == "tied" else jnp.ones(shape, bool)
        self.species = _species_names(n_species, species)
        self.orders = orders
        self.order_max = float(order_max)
        self.conc_min = float(conc_min)
        self.conc_max = float(conc_max)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_mechanism(
        cls,
        stoichiometry: ArrayLike,
        rate_constants: ArrayLike,
        *,
        species: Sequence[str] | None = None,
        orders: ArrayLike | None = None,
        temperature_exponent: ArrayLike | None = None,
        activation_energy: ArrayLike | None = None,
        **kwargs,
    ) -> CRNN:
        """A CRNN with given weights: a known mechanism (e.g. to simulate data).

        Parameters
        ----------
        stoichiometry : ``(n_reactions, n_species)`` coefficients ``nu``.
        rate_constants : ``k`` (or the Arrhenius ``A``), positive, ``(n_reactions,)``.
        orders : free reaction orders ``(n_reactions, n_species)``; default tied.
        temperature_exponent, activation_energy : Arrhenius ``b`` and ``Ea`` (kJ/mol);
            giving either makes the model Arrhenius (the other defaults to zero).
        kwargs : ``order_max``, ``conc_min``, ``conc_max``.
        """
        nu = np.asarray(stoichiometry, dtype=float)
        if nu.ndim != 2:
            raise ValueError(f"stoichiometry must be 2-D (n_reactions, n_species), got shape "
                             f"{nu.shape}")
        k = np.asarray(rate_constants, dtype=float)
        if k.shape != (nu.shape[0],):
            raise ValueError(f"rate_constants must have shape ({nu.shape[0]},) (one per "
                             f"reaction), got {k.shape}")
        if not np.all(k > 0):
            raise ValueError(f"rate_constants must be positive, got {k}")
        arrhenius = temperature_exponent is not None or activation_energy is not None
        model = cls(nu.shape[1], nu.shape[0], key=jax.random.key(0), species=species,
                    orders="tied" if orders is None else "free", arrhenius=arrhenius,
                    **kwargs)
        model = eqx.tree_at(lambda m: (m.stoichiometry, m.log_rate), model,
                            (jnp.asarray(nu), jnp.log(jnp.asarray(k))))
        if orders is not None:
            o = np.asarray(orders, dtype=float)
            if o.shape != nu.shape:
                raise ValueError(f"orders must have the shape of stoichiometry {nu.shape}, got "
                                 f"{o.shape}")
            if np.any(~np.isfinite(o)) or np.any(o < 0):
                j, i = (int(x[0]) for x in np.nonzero(~(np.isfinite(o) & (o >= 0))))
                raise ValueError(f"orders must be finite and >= 0 (they are clipped to "
                                 f"[0, order_max]: an inhibition term would become order 0); "
                                 f"got {o[j, i]:g} for reaction {j}, species {i}")
            model = eqx.tree_at(lambda m: m.free_orders, model, jnp.asarray(o))
        if arrhenius:
            for name, value in (("temperature_exponent", temperature_exponent),
                                ("activation_energy", activation_energy)):
                v = np.zeros(nu.shape[0]) if value is None else np.asarray(value, float)
                if v.shape != (nu.shape[0],):
                    raise ValueError(f"{name} must have shape ({nu.shape[0]},), got {v.shape}")
                model = eqx.tree_at(lambda m, name=name: getattr(m, name), model,
                                    jnp.asarray(v))
        return model

    # ------------------------------------------------------------------ properties

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_reactions(self) -> int:
        return int(self.stoichiometry.shape[-2])

    @property
    def arrhenius(self) -> bool:
        return self.activation_energy is not None

    @property
    def nu(self) -> Float[Array, "n_reactions n_species"]:
        """The stoichiometric coefficients with pruned entries exactly zero."""
        return jnp.where(self.mask, self.stoichiometry, 0.0)

    @property
    def reaction_orders(self) -> Float[Array, "n_reactions n_species"]:
        """The input weights: ``clip(-nu, 0, order_max)`` (tied) or the free orders
        clipped to ``[0, order_max]``; zero where pruned."""
        if self.free_orders is None:
            raw, keep = -self.stoichiometry, self.mask
        else:
            raw, keep = self.free_orders, self.order_mask
        return jnp.where(keep, jnp.clip(raw, 0.0, self.order_max), 0.0)

    def log_rate_constants(self, temperature: ArrayLike | None = None) -> Float[Array, "..."]:
        """``ln k`` of each reaction (at ``temperature``, in kelvin, with Arrhenius):
        ``(n_reactions,)`` for one temperature, ``(..., n_reactions)`` for an array of
        them (each temperature against every reaction; a vector of as many temperatures as
        reactions used to pair them up, reaction ``j`` at ``T[j]``)."""
        if not self.arrhenius:
            return self.log_rate
        if temperature is None:
            raise ValueError("an Arrhenius CRNN needs the temperature (the vector field's "
                             "args), got None")
        temperature = jnp.asarray(temperature)[..., None]
        return (self.log_rate + self.temperature_exponent * jnp.log(temperature)
                - self.activation_energy / (GAS_CONSTANT * temperature))

    def rate_constants(self, temperature: ArrayLike | None = None) -> Float[Array, "..."]:
        """``k`` of each reaction (at ``temperature`` with Arrhenius)."""
        return jnp.exp(self.log_rate_constants(temperature))

    def rates(self, c: Float[Array, " n_species"],
              temperature: ArrayLike | None = None) -> Float[Array, " n_reactions"]:
        """Reaction rates ``r_j = exp(sum_i order[j, i] ln clip(c_i) + ln k_j)``."""
        log_c = jnp.log(jnp.clip(c, self.conc_min, self.conc_max))
        return jnp.exp(self.reaction_orders @ log_c + self.log_rate_constants(temperature))

    def __call__(self, t, c: Float[Array, " n_species"], args=None) -> Float[Array, " n_species"]:
        """The vector field ``dc/dt = nu^T r(c)``; ``args`` is the temperature (Arrhenius)
        or unused."""
        return self.rates(c, args) @ self.nu


def vector_field(t, c, args):
    """``solvers.solve``'s vector field for a CRNN passed as ``args = (model, temperature)``
    (the model is then a differentiable argument of the solve)."""
    model, temperature = args
    return model(t, c, temperature)
