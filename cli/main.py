"""The ``adapterhub`` command: a click group assembled from one module per area.

Each module listed in ``_COMMAND_MODULES`` exposes ``COMMANDS``; modules keep heavy imports (torch,
transformers) inside their command bodies so that ``adapterhub list`` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib

import click

from .output import HubGroup, quiet_ml_libraries

quiet_ml_libraries()

_COMMAND_MODULES = (
    ".registry_cmds",
    ".auth_cmd",
    ".base_cmds",
    ".data_cmd",
    ".demo",
    ".eval_cmd",
    ".hub_cmd",
    ".merge_cmd",
    ".serve_cmd",
    ".train_cmd",
)


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapterhub")
def cli() -> None:
    """Keep, share, merge and serve PEFT adapters (LoRA, QLoRA, prompt tuning) for one base model."""


for _module in _COMMAND_MODULES:
    for _command in importlib.import_module(_module, __package__).COMMANDS:
        cli.add_command(_command)
