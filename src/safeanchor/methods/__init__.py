"""The method table: every training method safeanchor knows, with its paper name, kind and coefficient.

One table, read by the trainer (``SafeTrainingConfig.method``), the experiment matrix
(``safeanchor bench``), the CLI and the time estimate. A method is one of five kinds:

* ``none``        -- no training (``start``: the aligned model as it is);
* ``sft``         -- plain instruction fine-tuning;
* ``data_mix``    -- SFT on the task data plus safety samples (harmful prompt -> refusal);
* ``regularizer`` -- CE + α(step) · R, with R a :class:`~safeanchor.methods.base.Regularizer`
  (ProCon, AsFT, the refusal-decision loss), optionally with safety samples too;
* ``post_hoc``    -- SFT, then a transform of the trained adapter (Safe LoRA).

Every method has one coefficient, ``alpha`` in a run config, whatever its paper calls it (ProCon
α, AsFT λ, Safe LoRA τ, the decision loss's weight); the default is in the table and the config
resolves it once, so ``train_config.yaml`` records the value used. ``schedule`` holds a method's
default coefficient schedule (ProCon_wu: a warm-up), which explicit config values override.

Adding a method is one file with its regularizer (or transform), one :func:`register_method`
call (here, for the built-in ones) and one row of the parametrised test; it then appears in
``safeanchor bench`` and ``safeanchor train --set method=<name>``.

>>> get_method("procon_wu_safe").paper_name, get_method("procon_wu_safe").safety_data
('ProCon_wu_safe', True)
>>> get_method("safety_data")
Traceback (most recent call last):
...
ValueError: method 'safety_data' is now called 'sft_safe'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .base import Regularizer, RegularizerSetupError

KINDS = ("none", "sft", "data_mix", "regularizer", "post_hoc")


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    name: str  # the one spelling: config `method`, bench `methods`, run folder names
    paper_name: str
    kind: str
    #: the component's name: logs ``<component>/raw`` and ``<component>/coef``, options in
    #: ``regularizer_options.<component>``; shared by variants (procon, procon_wu, ... -> "procon")
    component: str | None = None
    #: regularizer kind: ``factory(config) -> Regularizer`` (reads and validates its options)
    factory: Callable[[Any], Regularizer] | None = None
    #: post_hoc kind: ``transform(model, config, out_dir) -> summary`` after training, and
    #: ``check_options(config)`` that validates its options before any work
    transform: Callable[[Any, Any, Any], dict[str, Any]] | None = None
    check_options: Callable[[Any], Any] | None = None
    safety_data: bool = False
    coefficient: str | None = None  # what the paper calls the coefficient (α, λ, τ, w)
    default: float | None = None  # its default value; None: the method has none
    schedule: Mapping[str, Any] = field(default_factory=dict)  # default alpha_schedule, schedule_length, ...
    #: options of the component that an experiment fills from its model pair: "aligned_model"
    #: gets the start model, "unaligned_model" the unaligned one
    model_pair_options: tuple[str, ...] = ()
    in_bench: bool = True  # part of the default `safeanchor bench` matrix
    epochs_like: str | None = None  # in an experiment: train as many epochs as this method's run (a control)
    setup_seconds: float = 0.0  # the time estimate's extra fixed cost per run (2-core CPU, SmolLM2-135M)
    summary: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "regularizer" and (self.factory is None or not self.component):
            raise ValueError(f"method {self.name}: a regularizer method needs a component name and a factory")
        if self.kind == "post_hoc" and (self.transform is None or not self.component):
            raise ValueError(f"method {self.name}: a post_hoc method needs a component name and a transform")
        if self.kind == "data_mix" and not self.safety_data:
            raise ValueError(f"method {self.name}: a data_mix method mixes in safety data")
        if (self.default is None) != (self.coefficient is None):
            raise ValueError(f"method {self.name}: coefficient and default go together")

    @property
    def trains(self) -> bool:
        return self.kind != "none"

    @property
    def regularizers(self) -> tuple[str, ...]:
        """The regularizer components this method adds to the loss."""
        return (self.component,) if self.kind == "regularizer" else ()

    def make_regularizer(self, config) -> Regularizer:
        assert self.factory is not None, self.name
        return self.factory(config)

    def validate_options(self, config) -> None:
        """Construct what the options configure (cheap: no model work); errors are ValueError/TypeError."""
        if self.factory is not None:
            self.factory(config)
        if self.check_options is not None:
            self.check_options(config)


METHODS: dict[str, Method] = {}

#: old spellings, each refused with the one that replaced it
RENAMED = {"safety_data": "sft_safe", "sft_safety": "sft_safe", "procon_s": "procon", "procon_s_safe": "procon_safe"}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the table (a test or a plugin may add its own); returns it."""
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.name in RENAMED:
        raise ValueError(f"method name {method.name!r} is an old spelling of {RENAMED[method.name]!r}")
    owners = {m.component: m for m in METHODS.values() if m.component and m.name != method.name}
    other = owners.get(method.component)
    if other is not None and (other.factory is not method.factory or other.transform is not method.transform):
        raise ValueError(f"method {method.name}: component {method.component!r} already belongs to {other.name} "
                         "with another factory")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def method_names(*, trained: bool | None = None, bench: bool | None = None) -> list[str]:
    """Method names in table order; ``trained``/``bench`` filter on :attr:`Method.trains` / ``in_bench``."""
    return [m.name for m in METHODS.values()
            if (trained is None or m.trains == trained) and (bench is None or m.in_bench == bench)]


def get_method(name: str) -> Method:
    """The table row of ``name``; an old spelling or an unknown name is a ValueError saying what to use."""
    if name in METHODS:
        return METHODS[name]
    if name in RENAMED:
        raise ValueError(f"method {name!r} is now called {RENAMED[name]!r}")
    close = difflib.get_close_matches(str(name), list(METHODS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} Methods: {', '.join(METHODS)}")


def resolve_method(name: str) -> Method:
    """The trainable method ``name`` (``start`` trains nothing and is refused here)."""
    method = get_method(name)
    if not method.trains:
        raise ValueError(f"method {name!r} trains nothing; trainable methods: {', '.join(method_names(trained=True))}")
    return method


def components() -> dict[str, Method]:
    """Component name -> a method that owns it (for ``regularizer_options`` validation)."""
    out: dict[str, Method] = {}
    for m in METHODS.values():
        if m.component:
            out.setdefault(m.component, m)
    return out


def _builtin() -> None:
    from . import asft, procon, refusal_decision, safe_lora

    # the paper's warm-up: m epochs of strong α with their own learning-rate schedule, then the standard run
    warmup = {"alpha_schedule": "warmup", "alpha_after": 0.0, "schedule_unit": "epoch", "warmup_placement": "before"}
    rows = [
        Method("start", "vanilla (aligned start)", "none", summary="the aligned start model, not fine-tuned"),
        Method("sft", "plain IFT", "sft", summary="response-only instruction fine-tuning"),
        Method("sft_long", "plain IFT, m + n epochs", "sft", epochs_like="procon_wu_safe",
               summary="the equal-compute control: plain SFT for as many epochs as procon_wu_safe's warm-up "
                       "plus standard run (in an experiment)"),
        Method("sft_safe", "IFT + safety data", "data_mix", safety_data=True,
               summary="SFT with harmful -> refusal samples mixed in (Bianchi et al.)"),
        Method("safe_lora", "Safe LoRA", "post_hoc", component="safe_lora", transform=safe_lora.post_hoc,
               check_options=safe_lora.options_from_config, coefficient="τ", default=safe_lora.DEFAULT_THRESHOLD,
               model_pair_options=("unaligned_model",),
               summary="SFT, then project the LoRA modules least aligned with W_aligned - W_unaligned"),
        Method("asft", "AsFT", "regularizer", component="asft", factory=asft.from_config, coefficient="λ",
               default=1.0, model_pair_options=("aligned_model", "unaligned_model"),
               summary="penalise LoRA updates off the alignment direction (reference scripts: λ = 1)"),
        Method("asft_safe", "AsFT + safety data", "regularizer", component="asft", factory=asft.from_config,
               safety_data=True, coefficient="λ", default=1.0, model_pair_options=("aligned_model", "unaligned_model"),
               in_bench=False, summary="AsFT with safety samples mixed in"),
        Method("procon", "ProCon_s", "regularizer", component="procon", factory=procon.from_config,
               coefficient="α", default=0.1, schedule={"alpha_schedule": "constant"}, setup_seconds=45.0,
               summary="anchor response-token projections on the r-direction, constant α (paper 0.1-0.2)"),
        Method("procon_wu", "ProCon_wu", "regularizer", component="procon", factory=procon.from_config,
               coefficient="α", default=1.0, schedule={**warmup, "schedule_length": 1.0}, setup_seconds=45.0,
               summary="ProCon with a strong α (paper 1-2) for a warm-up, then 0 (paper: ~4 of 10 epochs)"),
        Method("procon_safe", "ProCon_s_safe", "regularizer", component="procon", factory=procon.from_config,
               safety_data=True, coefficient="α", default=0.1, schedule={"alpha_schedule": "constant"},
               setup_seconds=45.0, summary="ProCon_s with safety samples mixed in"),
        Method("procon_wu_safe", "ProCon_wu_safe", "regularizer", component="procon", factory=procon.from_config,
               safety_data=True, coefficient="α", default=1.0, schedule={**warmup, "schedule_length": 0.5},
               setup_seconds=45.0, summary="ProCon_wu with safety samples; the warm-up halved (paper)"),
        Method("refusal_decision", "refusal-decision loss", "regularizer", component="refusal_decision",
               factory=refusal_decision.from_config, coefficient="w", default=1.0, in_bench=False,
               summary="BCE on P(first response token opens a refusal); the alignment stage's loss"),
    ]
    for row in rows:
        register_method(row)


_builtin()

__all__ = ["KINDS", "METHODS", "RENAMED", "Method", "Regularizer", "RegularizerSetupError",
           "components", "get_method", "method_names", "register_method", "resolve_method", "unregister_method"]
