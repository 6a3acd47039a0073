"""The layer-local RL objective `pib-td`: L = L_PIB + lambda * L_TD for one unit.

- L_TD: the Huber temporal-difference loss of double Q-learning (over the replayed
  transition's k steps: r_0 + gamma r_1 + ... + gamma^k Q(s_k)) on the unit's own Q
  estimate: the last unit's outputs are the Q-values; every other unit reads its output Z
  through a small local head (Linear(out, n_actions)), trained with it. The bootstrap
  target comes from the unit's own target copy (model and head, refreshed every
  `target_every` steps, or Polyak-averaged by `tau` every step), evaluated at the greedy action of the online copy.
- L_PIB: -(I(Y;Z) - beta * I(X;Z)) on the minibatch (labpnn.pib.pib_terms), X the scaled
  observation, Z the unit's output on the measured inputs. Y is the greedy action of the
  unit's target copy at the state, or (label value) that action with the state's value bin
  (docs/rl.md says why): what Z must keep is what decides the action and the value; the
  rest of the observation, and the hardware noise on top, it may forget.

Gradients stay inside the unit: its inputs are measurements (no graph behind them), the
targets are computed without gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labpnn.objectives import ObjectiveContext, register_objective
from labpnn.pib import pib_terms

NEEDS = frozenset({"action", "reward", "steps", "h_next", "done"})


class PIBTDOptions(BaseModel):
    """Options of objective `pib-td` (recipe: `objective: {name: pib-td, ...}`)."""

    model_config = ConfigDict(extra="forbid")
    lambda_td: float = Field(10.0, ge=0, description="weight of the TD loss against the PIB term (bits)")
    pib: bool = Field(True, description="False: the TD loss alone (plain double DQN, the baseline)")
    beta: float = Field(0.01, ge=0, description="weight of the compression term I(X;Z)")
    alpha: float = Field(2.0, gt=0, description="Renyi order (2: the fast eigen-free path)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    label: Literal["greedy", "action", "value"] = Field("greedy", description="what plays Y: the target "
                                                        "copy's greedy action at the state, the action taken, "
                                                        "or the greedy action and the state's value bin")
    value_bins: int = Field(4, ge=2, description="label value: the target copy's state values cut into this "
                            "many equal-count bins of the minibatch")
    target_every: int = Field(250, ge=1, description="optimisation steps between target-copy refreshes")
    tau: float | None = Field(None, gt=0, le=1, description="Polyak averaging of the target copy: after every "
                              "step target <- tau * online + (1 - tau) * target (target_every then unused)")


class PIBTDObjective:
    """pib-td for one unit with `out_features` outputs in an agent with `n_actions` actions."""

    name = "pib-td"
    needs = NEEDS

    def __init__(self, options: PIBTDOptions, out_features: int, n_actions: int, last: bool, seed: int):
        if last and out_features != n_actions:
            raise ValueError(f"pib-td: the last unit gives the Q-values, so its out ({out_features}) "
                             f"must equal the number of actions ({n_actions})")
        self.options = options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head: nn.Module = nn.Identity() if last else nn.Linear(out_features, n_actions)
        self.target: nn.Module | None = None  # (model, head) copy, made at the first step
        self.steps = 0

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.head.parameters()

    def q_values(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self.head(model(h))

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        o, t = self.options, batch.targets
        if self.target is None or (o.tau is None and self.steps % o.target_every == 0):
            self.target = copy.deepcopy(nn.Sequential(model, self.head)).requires_grad_(False)
        elif o.tau is not None:
            with torch.no_grad():
                for target, online in zip(self.target.parameters(), nn.Sequential(model, self.head).parameters()):
                    target.lerp_(online, o.tau)
        self.steps += 1
        z = model(batch.h)
        q = self.head(z)
        action = t["action"].long()
        with torch.no_grad():
            greedy_next = self.q_values(model, t["h_next"]).argmax(1, keepdim=True)
            bootstrap = self.target(t["h_next"]).gather(1, greedy_next)[:, 0]
            discounts = o.gamma ** torch.arange(t["reward"].shape[1], dtype=torch.float32)
            target = t["reward"] @ discounts + o.gamma ** t["steps"].float() * (1 - t["done"]) * bootstrap
            y = self._label(batch.h, action)
        td = nn.functional.smooth_l1_loss(q.gather(1, action[:, None])[:, 0], target)
        values = {"td": td.item(), "q": q.detach().mean().item()}
        if not o.pib:
            return o.lambda_td * td, values
        pib = pib_terms(batch.x, y, z, beta=o.beta, alpha=o.alpha)
        return pib.loss + o.lambda_td * td, {**values, "I_XZ": pib.i_xz.item(), "I_YZ": pib.i_yz.item()}

    def _label(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Y of L_PIB for the minibatch's states (docs/rl.md: what plays Y)."""
        o = self.options
        if o.label == "action":
            return action
        q = self.target(h)
        if o.label == "greedy":
            return q.argmax(1)
        value = q.max(1).values
        edges = torch.quantile(value, torch.linspace(0, 1, o.value_bins + 1)[1:-1])
        return q.argmax(1) * o.value_bins + torch.bucketize(value, edges)

    def state(self) -> dict:
        """The head, the target copy and the step count, for a checkpoint."""
        return {"head": self.head.state_dict(), "steps": self.steps,
                "target": None if self.target is None else self.target.state_dict()}

    def load_state(self, state: dict, model: nn.Module) -> None:
        self.head.load_state_dict(state["head"])
        self.steps = int(state["steps"])
        if state["target"] is not None:
            self.target = copy.deepcopy(nn.Sequential(model, self.head)).requires_grad_(False)
            self.target.load_state_dict(state["target"])


def _build(options: PIBTDOptions, ctx: ObjectiveContext) -> PIBTDObjective:
    return PIBTDObjective(options, ctx.out_features, ctx.n_classes, ctx.last, ctx.seed)


register_objective("pib-td", PIBTDOptions, _build)
