"""Build the model straight into ZeRO-3 partitions (docs/cluster.md, section 4, note 2): no rank makes
a whole ID table, and the backbone is loaded into its partitions by transformers' DeepSpeed integration.

Inside `PartitionedBuild.open(ds_config)`, an `HfDeepSpeedConfig` of the run's DeepSpeed config is alive, so
`from_pretrained` / `from_config` create the backbone under `deepspeed.zero.Init` and load the checkpoint's
safetensors files (all shards of a `model.safetensors.index.json`) module by module into the partitions
(transformers 5.25: rank 0 maps the files and copies each gathered module's weights; the other ranks see
only shapes). Entered, the build is a `deepspeed.zero.Init` context in which `make_table` creates each ID
table as a ZeRO-3 parameter whose rank-local slice is written from the table's seeded stream
(`cllm4rec.table_init`): the values the whole-table build draws, a partition's worth of memory per rank.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from cllm4rec.table_init import TableInit
from cllm4rec.zero_params import held_elements


def fill_slice(init: TableInit, name: str, param: nn.Parameter, out: torch.Tensor) -> torch.Tensor:
    """Write this rank's slice of table `name` into `out` [P] (P = the partition's size: elements
    [rank·P, rank·P + P) of the flattened table; the padding past its end is zeroed); returns `out`."""
    start, held = held_elements(param)
    with torch.no_grad():
        init.write(name, start, out[:held.numel()])
        out[held.numel():].zero_()
    return out


def write_partition(init: TableInit, name: str, param: nn.Parameter) -> None:
    """Write this rank's slice of table `name` into its partition `param.ds_tensor`."""
    fill_slice(init, name, param, param.ds_tensor)


def exact_partition(init: TableInit, name: str, param: nn.Parameter) -> torch.Tensor:
    """float32 [P]: this rank's slice of table `name`, as `write_partition` lays it out."""
    return fill_slice(init, name, param, torch.empty(param.ds_tensor.numel(), dtype=torch.float32))


@dataclass
class PartitionedBuild:
    """A `deepspeed.zero.Init` of the run's DeepSpeed config (a context manager) and its table maker."""

    init: Any  # deepspeed.zero.Init

    @classmethod
    @contextlib.contextmanager
    def open(cls, ds_config: dict[str, Any]) -> Iterator["PartitionedBuild"]:
        """Transformers' ZeRO-3 integration on for the block (the HfDeepSpeedConfig is kept alive, then
        unset: later loads in this process build whole models again)."""
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        hf_config = HfDeepSpeedConfig(ds_config)
        try:
            yield cls(deepspeed.zero.Init(config_dict_or_path=ds_config))
        finally:
            unset_hf_deepspeed_config()
            del hf_config

    def __enter__(self) -> "PartitionedBuild":
        self.init.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.init.__exit__(*exc)

    def make_table(self, init: TableInit, name: str, rows: int, dim: int, device: torch.device) -> nn.Parameter:
        """Table `name` [rows, dim] as a ZeRO-3 parameter holding only this rank's partition (on
        `zero.Init`'s device, not `device`). Its placeholder is host memory allocated but never written,
        so the OS gives it no pages (DeepSpeed reads it once, as zero pages, when it makes the
        partition); `zero.Init`'s own conversion, which broadcasts every byte of the whole tensor from
        rank 0, is bypassed."""
        param = nn.Parameter(torch.empty(rows, dim, dtype=self.init.dtype, device="cpu"))
        self.init._convert_to_deepspeed_param(param)
        param.partition()
        write_partition(init, name, param)
        return param
