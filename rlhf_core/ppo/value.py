"""Recipe step 4a: value estimates, from a separate critic or a head on the policy's backbone.

* ``separate`` (InstructGPT, TRL's PPO): a second transformer, trunk + scalar head, one value
  per position. Initialised from the reward model (trunk *and* head: it already reads
  "how good is this text so far", InstructGPT sec. 3.5) or from the policy (trunk; fresh head).
* ``shared``: one linear head on the policy's final hidden state. Half the memory and one
  forward pass, at the price of value gradients flowing into the policy trunk.

:class:`PolicyWithValue` holds the policy and whichever critic, so one optimizer, one
checkpoint and one ``named_parameters`` cover both (``policy.*``, ``critic.*`` / ``value_head.*``).
Shapes: ``B`` responses, ``P`` prompt tokens, ``R`` response tokens, ``H`` hidden size.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from rlhf_core.errors import ConfigError
from rlhf_core.models import unwrap_peft
from rlhf_core.ppo.logprobs import PolicyOutput, policy_forward
from rlhf_core.sampling import position_ids_from_mask

ValueModelKind = Literal["separate", "shared"]
ValueInit = Literal["reward", "policy"]


class ValueModel(torch.nn.Module):
    """Separate critic: a ``*ForSequenceClassification`` trunk + its one-output ``score`` head, per token."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "score", None), torch.nn.Linear) or backbone.score.out_features != 1:
            raise TypeError(f"ValueModel needs a one-label *ForSequenceClassification model, got {type(backbone).__name__}")
        self.backbone = backbone

    @classmethod
    def from_reward_model(cls, reward_model: torch.nn.Module) -> ValueModel:
        """A trainable copy of a :class:`RewardModel`'s trunk and head (LoRA adapters merged into the copy)."""
        inner = getattr(reward_model, "transformers_model", None)
        if inner is None:
            raise ConfigError(
                f"value_init='reward' needs a RewardModel with a transformer backbone, got {type(reward_model).__name__}; "
                "use value_init='policy'"
            )
        backbone = copy.deepcopy(getattr(reward_model, "backbone", inner))
        if backbone is not unwrap_peft(backbone):
            backbone = backbone.merge_and_unload()
        for p in backbone.parameters():
            p.requires_grad_(True)
        return cls(backbone)

    @classmethod
    def from_causal_lm(cls, model: torch.nn.Module, *, seed: int = 0) -> ValueModel:
        """Trunk copied from a causal LM (the policy; adapters merged into the copy), new small-normal head."""
        from rlhf_core.reward.model import RewardModel

        base = model
        if base is not unwrap_peft(base):  # LoRA: merge into a copy, the policy keeps its adapters
            base = copy.deepcopy(model).merge_and_unload()
        backbone = RewardModel.from_model(base, seed=seed).transformers_model
        for p in backbone.parameters():
            p.requires_grad_(True)
        return cls(backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> values (B, T) (one per position)."""
        trunk = getattr(self.backbone, self.backbone.base_model_prefix)
        hidden = trunk(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        ).last_hidden_state  # (B, T, H)
        return self.backbone.score(hidden).squeeze(-1).float()  # (B, T)


class ValueHead(torch.nn.Module):
    """Shared-backbone critic: ``Linear(H, 1)`` on the policy's final hidden state, starting at 0.

    Zero weights and bias: every value starts at 0, which is what a centered score's return is
    worth on average, and no value gradient reaches the policy's trunk before the head has
    learnt something. (A random head on SmolLM2's hidden states starts O(1) off on every token:
    its noise swamped the score in the first steps' advantages, explained variance ~ -3.)
    """

    def __init__(self, hidden_size: int, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=dtype)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1).float()  # (B, T, H) -> (B, T)


class PolicyWithValue(torch.nn.Module):
    """The policy plus its critic (exactly one of ``critic`` / ``value_head``)."""

    def __init__(
        self, policy: torch.nn.Module, *, critic: ValueModel | None = None, value_head: ValueHead | None = None
    ) -> None:
        super().__init__()
        if (critic is None) == (value_head is None):
            raise ValueError("PolicyWithValue needs exactly one of critic (separate) or value_head (shared)")
        self.policy = policy
        self.critic = critic
        self.value_head = value_head

    def forward(
        self,
        query_response_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_start: int,
        temperature: float,
        *,
        keep_logits: bool = False,
    ) -> tuple[PolicyOutput, torch.Tensor]:
        """(B, P+R) ids and mask -> (policy output at the R response positions, values (B, R)).

        ``values[:, i]`` is read at position ``P-1+i``, the state before response token ``i``.
        """
        shared = self.value_head is not None
        out = policy_forward(
            self.policy, query_response_ids, attention_mask, response_start, temperature,
            keep_logits=keep_logits, output_hidden=shared,
        )
        if shared:
            values = self.value_head(out.hidden)  # (B, R)
            out.hidden = None
        else:
            values = self.critic(query_response_ids, attention_mask)[:, response_start - 1 : -1]  # (B, R)
        return out, values


def build_policy_with_value(
    policy: torch.nn.Module,
    *,
    kind: ValueModelKind,
    init: ValueInit,
    reward_model: torch.nn.Module | None = None,
    value_model: torch.nn.Module | None = None,
    seed: int = 0,
) -> PolicyWithValue:
    """Assemble :class:`PolicyWithValue` from the config's ``value_model`` / ``value_init``.

    A ``value_model`` passed in (a :class:`ValueModel` or :class:`ValueHead`) is used as is.
    """
    if value_model is not None:
        if isinstance(value_model, ValueHead):
            return PolicyWithValue(policy, value_head=value_model)
        if not isinstance(value_model, ValueModel):
            value_model = ValueModel(value_model)
        return PolicyWithValue(policy, critic=value_model)
    if kind == "shared":
        if init == "reward":
            raise ConfigError(
                "value_model='shared' puts the value head on the policy's hidden states, so it cannot start from the "
                "reward model's head: set value_init='policy' (or value_model='separate')"
            )
        hidden = unwrap_peft(policy).config.hidden_size
        dtype = next(policy.parameters()).dtype
        head = ValueHead(hidden, dtype=dtype).to(next(policy.parameters()).device)
        return PolicyWithValue(policy, value_head=head)
    if init == "reward":
        if reward_model is None:
            raise ConfigError("value_init='reward' needs the reward model")
        return PolicyWithValue(policy, critic=ValueModel.from_reward_model(reward_model))
    return PolicyWithValue(policy, critic=ValueModel.from_causal_lm(policy, seed=seed))
