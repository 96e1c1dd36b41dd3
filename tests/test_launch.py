"""storyboard.launch: one process per GPU that CUDA_VISIBLE_DEVICES shows, under accelerate launch when several; on
several machines, torchrun's NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT passed to the launcher."""

from __future__ import annotations

import re
import sys

import pytest

from storyboard.errors import StoryboardError
from storyboard.launch import DEFAULT_PORT, Nodes, command, processes, visible_gpus


@pytest.mark.parametrize(
    ("visible", "count"), [("", 0), ("-1", 0), ("0", 1), ("2,3", 2), ("0,1,2,3", 4), ("1,-1,2", 1)]
)
def test_counts_what_cuda_visible_devices_shows(monkeypatch, visible, count):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == count


def test_one_gpu_or_none_runs_in_this_process():
    assert command("stages.train", ["--out", "x"], processes(0, None), 0) is None
    assert command("stages.train", ["--out", "x"], processes(1, None), 1) is None


def test_several_gpus_go_through_accelerate_launch():
    cmd = command("stages.train", ["--out", "x"], processes(4, None), 4)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-4:] == ["-m", "stages.train", "--out", "x"]


def test_the_count_can_be_set():
    assert processes(4, "2") == 2 and processes(4, "1") == 1
    cpu = command("stages.generate", ["--mode", "lora"], processes(0, "2"), 0)  # the CPU tests' path
    assert cpu[:3] == [sys.executable, "-m", "torch.distributed.run"] and cpu[-3:] == [
        "stages.generate",
        "--mode",
        "lora",
    ]
    with pytest.raises(StoryboardError, match="STORYBOARD_PROCESSES=8 but only 2"):
        processes(2, "8")
    with pytest.raises(StoryboardError, match="whole number"):
        processes(2, "two")


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_several_machines_pass_their_rank_and_machine_0s_address_to_accelerate():
    nodes = Nodes.from_env({"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29600"})
    assert nodes == Nodes(count=2, rank=1, address="10.0.0.5", port=29600)
    cmd = command("stages.train", ["--out", "x"], processes(4, None), 4, nodes)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert _flag(cmd, "--num_processes") == "8"  # accelerate counts every process of every machine
    assert _flag(cmd, "--num_machines") == "2" and _flag(cmd, "--machine_rank") == "1"
    assert _flag(cmd, "--main_process_ip") == "10.0.0.5" and _flag(cmd, "--main_process_port") == "29600"
    assert cmd[-4:] == ["-m", "stages.train", "--out", "x"]


def test_accelerate_reads_the_machines_as_torchrun_flags():
    """accelerate's own parser and multi-GPU set-up turn the command into torchrun's static rendezvous: 4 processes
    here, 2 machines, this one rank 1, machine 0 at MASTER_ADDR:MASTER_PORT."""
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    cmd = command("stages.train", ["--out", "x"], 4, 4, Nodes(count=2, rank=1, address="10.0.0.5", port=29600))
    args = launch_command_parser().parse_args(cmd[3:])
    prepare_multi_gpu_env(args)
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("4", "2", 1)
    assert args.rdzv_backend == "static" and args.rdzv_endpoint == "10.0.0.5:29600"
    assert args.module and args.training_script == "stages.train" and args.training_script_args == ["--out", "x"]


def test_several_machines_of_one_cpu_process_each_go_through_torchrun():
    nodes = Nodes.from_env({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
    assert nodes.port == DEFAULT_PORT
    cmd = command("stages.train", [], processes(0, "1"), 0, nodes)  # one process here is not one in all
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" not in cmd
    assert _flag(cmd, "--nproc_per_node") == "1" and _flag(cmd, "--nnodes") == "2" and _flag(cmd, "--node_rank") == "0"
    assert _flag(cmd, "--master_addr") == "127.0.0.1" and _flag(cmd, "--master_port") == str(DEFAULT_PORT)


def test_one_machine_ignores_a_platforms_master_address():
    assert Nodes.from_env({"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234"}) == Nodes()
    assert Nodes.from_env({"NNODES": "1", "NODE_RANK": "0"}) == Nodes()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNODES": "2", "MASTER_ADDR": "10.0.0.5"}, "NNODES=2 but NODE_RANK is unset: set it to this machine's rank"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK=2 but NNODES=2: ranks run from 0 to 1"),
        ({"NNODES": "2", "NODE_RANK": "-1", "MASTER_ADDR": "h"}, "NODE_RANK=-1 but NNODES=2"),
        ({"NNODES": "2", "NODE_RANK": "1"}, "NNODES=2 but MASTER_ADDR is unset: set it on every machine"),
        ({"NODE_RANK": "1"}, "NODE_RANK=1 but NNODES is unset: set NNODES to the number of machines"),
        ({"NNODES": "two"}, "NNODES='two': set a whole number"),
        ({"NNODES": "0"}, "NNODES=0: set the number of machines"),
        ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
    ],
)
def test_bad_machine_settings_name_the_variable_and_the_fix(env, message):
    with pytest.raises(StoryboardError, match=re.escape(message)):
        Nodes.from_env(env)
