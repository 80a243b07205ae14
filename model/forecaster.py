"""The recurrent forecaster: a channel-independent GRU (or LSTM) that predicts each channel's next value.

Channel independence is what lets one model score a stream with any number of channels: every
(device, channel) pair is one *row* with its own hidden state, and all rows share the weights. Values
reach the model already normalised per row (see `model.normaliser`), so the same weights serve a
temperature probe in kelvin and a request counter in millions.

Shapes (R = rows = devices x channels, F = input features, H = hidden size, S = state size):
- `forward(x, h)`: x (R, T, F), h (R, S) or None -> (pred (R, T), h (R, S))
- `step(x, h)`:    x (R, F),    h (R, S)         -> (pred (R,),   h (R, S))
S = H for a GRU and 2H for an LSTM (the cell state c is stored beside h: state = [h | c]).
"""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass
from typing import Literal, Protocol

import torch
from torch import nn

CellType = Literal["gru", "lstm"]


@dataclass(frozen=True)
class ForecasterConfig:
    """Architecture of a forecaster; stored in an artifact's config.json."""

    cell: CellType = "gru"
    hidden_size: int = 24
    input_features: int = 2  # [normalised value, gap flag]
    # Every forecaster is channel-independent (the module doc says why); artifacts saved before this
    # stopped being a field carry `"channel_independent": true` in config.json, so it is accepted and
    # dropped (an init-only parameter: not stored, not saved).
    channel_independent: InitVar[bool] = True

    def __post_init__(self, channel_independent: bool) -> None:
        del channel_independent

    @property
    def state_size(self) -> int:
        return self.hidden_size * (2 if self.cell == "lstm" else 1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Forecaster(Protocol):
    """What the pipeline needs of a model: a recurrent step with explicit state."""

    config: ForecasterConfig

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class RecurrentForecaster(nn.Module):
    """One recurrent layer and a linear head predicting the next normalised value of each row."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        rnn_cls = nn.GRU if config.cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(config.input_features, config.hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(config.hidden_size, 1)

    def initial_state(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.config.state_size, device=device)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence form for training: x (R, T, F), h (R, S) -> (pred (R, T), h (R, S))."""
        hidden = self.config.hidden_size
        if h is None:
            h = self.initial_state(x.shape[0], x.device)
        if self.config.cell == "gru":
            out, h_n = self.rnn(x, h.unsqueeze(0).contiguous())  # out (R, T, H), h_n (1, R, H)
            h_last = h_n.squeeze(0)
        else:
            hc = (h[:, :hidden].unsqueeze(0).contiguous(), h[:, hidden:].unsqueeze(0).contiguous())
            out, (h_n, c_n) = self.rnn(x, hc)
            h_last = torch.cat([h_n.squeeze(0), c_n.squeeze(0)], dim=1)  # (R, 2H)
        return self.head(out).squeeze(-1), h_last  # (R, T), (R, S)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step for every row: x (R, F), h (R, S) -> (pred (R,), h (R, S)).

        Calls the fused cell kernels with the layer's own weights, so stepping row by row and the
        sequence form above agree to float rounding.
        """
        w_ih, w_hh, b_ih, b_hh = self.rnn.all_weights[0]  # the one layer's weight_ih_l0 .. bias_hh_l0
        hidden = self.config.hidden_size
        if self.config.cell == "gru":
            h_new = torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
            out = h_new  # (R, H)
        else:
            h_t, c_t = torch.lstm_cell(x, (h[:, :hidden], h[:, hidden:]), w_ih, w_hh, b_ih, b_hh)
            out = h_t
            h_new = torch.cat([h_t, c_t], dim=1)  # (R, 2H)
        return torch.addmm(self.head.bias, out, self.head.weight.t()).squeeze(-1), h_new
