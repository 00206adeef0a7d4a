"""models.yaml and devices: budgets per device, device lists, simulated GPUs, a model too
big for its GPU, and the fake loader's claims on a simulated GPU (in a thread and in a real
worker process)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support import problems_of, running, wait_until
from worker_support import forkserver  # noqa: F401 (a fixture)

from registry.config.devices import config_devices, device_limits
from registry.config.schema import Config
from registry.loaders import LoadContext, load_model
from registry.loaders.fake import FakeModel
from registry.memory.device_budgets import Share
from registry.memory.device_usage import LEDGER_ENV, ledger, process_bytes
from registry.payload import TextRequest
from registry.reload import plan
from registry.units import parse_size

WriteConfig = Callable[[str], Config]
GiB = 1024**3
SIMULATED = "server:\n  simulated_devices: {cuda:0: 8GiB, cuda:1: 4GiB}\n"


@pytest.fixture
def own_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ledger"
    monkeypatch.setenv(LEDGER_ENV, str(root))
    return root


# --------------------------------------------------------------------- memory_budget


def test_a_scalar_budget_is_the_hosts(write_config: WriteConfig) -> None:
    """memory_budget: 2GiB is the host's budget, as always; GPUs get the default share."""
    config = write_config(SIMULATED + "  memory_budget: 2GiB\n")
    assert config.server.memory_budget == 2 * GiB
    assert config.server.device_budgets == {}
    assert device_limits(config.server, config_devices(config)) == {
        "cpu": 2 * GiB,
        "cuda:0": int(8 * GiB * 0.9),
        "cuda:1": int(4 * GiB * 0.9),
    }


def test_a_budget_per_device(write_config: WriteConfig) -> None:
    """A mapping gives the host its cpu entry and the GPUs theirs: cuda for every GPU,
    cuda:N for one, in bytes or as a percentage of that GPU's memory."""
    config = write_config(SIMULATED + "  memory_budget: {cpu: 2GiB, cuda: 50%, cuda:1: 1GiB}\n")
    assert config.server.memory_budget == 2 * GiB
    assert config.server.device_budgets == {
        "cuda": Share(percent=50.0),
        "cuda:1": Share(nbytes=GiB),
    }
    assert device_limits(config.server, config_devices(config)) == {
        "cpu": 2 * GiB,
        "cuda:0": 4 * GiB,
        "cuda:1": GiB,
    }


def test_a_mapping_without_cpu_keeps_the_hosts_default(write_config: WriteConfig) -> None:
    """Only GPU entries: the host keeps its default budget (50% of physical memory)."""
    config = write_config(SIMULATED + "  memory_budget: {cuda: 80%}\n")
    assert config.server.memory_budget == parse_size("50%")


def test_a_gpu_budget_change_is_a_server_change(write_config: WriteConfig) -> None:
    """Changing only a GPU's budget shows up in a reload's plan (not as 'no changes')."""
    old = write_config(SIMULATED + "  memory_budget: {cpu: 1GiB, cuda: 80%}\n", "a.yaml")
    new = write_config(SIMULATED + "  memory_budget: {cpu: 1GiB, cuda: 70%}\n", "b.yaml")
    assert plan(old, new).server_changed == ["device_budgets"]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            "{gpu: 1GiB}",
            "server.memory_budget: 'gpu' is not a device; the keys are cpu, cuda (every GPU) "
            "or cuda:N",
        ),
        ("{cuda: 0%}", "server.memory_budget: cuda: '0%': a percentage of memory must be in"),
        ("{cuda:1: lots}", "server.memory_budget: cuda:1: 'lots' is not a size"),
        ("{cpu: 0}", "server.memory_budget: Input should be greater than 0"),
        ("{mps: 1GiB}", "server.memory_budget: 'mps' is not a device"),
    ],
)
def test_bad_budget_mappings_name_the_entry(tmp_path: Path, budget: str, message: str) -> None:
    """Each wrong entry of a budget mapping is reported once, naming the entry."""
    problems = problems_of(tmp_path, f"server:\n  memory_budget: {budget}\n")
    assert len(problems) == 1
    assert message in problems[0]


def test_device_budgets_are_written_under_memory_budget(tmp_path: Path) -> None:
    """device_budgets is not a key of its own: the message says where budgets go, and the
    list of allowed keys does not offer it."""
    assert problems_of(tmp_path, "server:\n  device_budgets: {cuda: 1GiB}\n") == [
        "server: device_budgets is set through memory_budget; write e.g. "
        "memory_budget: {cpu: 2GiB, cuda: 80%, cuda:1: 10GiB}"
    ]
    (typo,) = problems_of(tmp_path, "server:\n  memory_budgets: 1GiB\n")
    assert "did you mean 'memory_budget'?" in typo
    assert "device_budgets" not in typo
    assert "simulated_devices" in typo


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("{gpu0: 1GiB}", "'gpu0' is not a GPU name; simulated devices are cuda:0, cuda:1..."),
        ("{cuda: 1GiB}", "'cuda' is not a GPU name"),
        ("{cuda:0: 0}", "cuda:0: a simulated GPU needs more than 0 bytes of memory"),
        ("{cuda:0: big}", "'big' is not a size"),
    ],
)
def test_bad_simulated_devices(tmp_path: Path, devices: str, message: str) -> None:
    (problem,) = problems_of(tmp_path, f"server:\n  simulated_devices: {devices}\n")
    assert problem.startswith("server.simulated_devices")
    assert message in problem


# ------------------------------------------------------------------------ device lists


def test_a_device_list_restricts_placement(write_config: WriteConfig) -> None:
    """device: [cuda:1, cuda:0] is kept as written; its candidates are those GPUs."""
    config = write_config(SIMULATED + "models:\n  a: {loader: fake, device: [cuda:1, cuda:0]}\n")
    spec = config.models["a"]
    assert spec.device == ["cuda:1", "cuda:0"]
    assert spec.device_spec.candidates([d.name for d in config_devices(config)]) == [
        "cuda:1",
        "cuda:0",
    ]


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("[cuda:0, auto]", "model 'a': device list entry 'auto' must be cpu, cuda or cuda:N"),
        ("[]", "model 'a': a device list must name at least one of cpu, cuda or cuda:N"),
        ("[cuda:0, cuda:0]", "model 'a': device list names cuda:0 more than once"),
        (
            "7",
            "model 'a', field 'device': device must be cpu, cuda, cuda:N, mps or auto, "
            "or a list such as [cuda:0, cuda:1]",
        ),
        ("[cuda:0, 1]", "field 'device': device must be cpu, cuda, cuda:N, mps or auto, or a"),
    ],
)
def test_bad_device_lists(tmp_path: Path, device: str, message: str) -> None:
    (problem,) = problems_of(tmp_path, f"models:\n  a: {{loader: fake, device: {device}}}\n")
    assert message in problem


# -------------------------------------------------------- a model too big for its GPU


def test_a_model_bigger_than_its_gpus_budget_is_refused(tmp_path: Path) -> None:
    """A pinned model bigger than its GPU's budget is a config error naming the GPU, its
    budget and where that budget comes from."""
    text = SIMULATED + (
        "  memory_budget: {cuda:1: 50%}\n"
        "models:\n  big: {loader: fake, device: cuda:1, options: {device_bytes: 3GiB}}\n"
    )
    assert problems_of(tmp_path, text) == [
        "model 'big': needs about 3.2 GB on cuda:1, more than its budget there "
        "(cuda:1: 2.1 GB, memory_budget.cuda:1 = 50% of 4.3 GB); raise "
        "server.memory_budget's cuda:1 entry or use a smaller model"
    ]


def test_a_model_that_fits_one_of_its_gpus_is_accepted(write_config: WriteConfig) -> None:
    """device: cuda is checked against every GPU: fitting the larger one is enough."""
    config = write_config(
        SIMULATED + "models:\n  m: {loader: fake, device: cuda, options: {device_bytes: 6GiB}}\n"
    )
    assert config.models["m"].device == "cuda"


def test_a_model_too_big_for_every_gpu_lists_their_budgets(tmp_path: Path) -> None:
    """Too big for each GPU it may use: the message lists every budget it was checked
    against, the default share named as such."""
    text = SIMULATED + (
        "  memory_budget: {cuda:0: 1GiB}\n"
        "models:\n  big: {loader: fake, device: cuda, options: {device_bytes: 5GiB}}\n"
    )
    assert problems_of(tmp_path, text) == [
        "model 'big': needs about 5.4 GB on any of cuda:0, cuda:1, more than its budget "
        "there (cuda:0: 1.1 GB, memory_budget.cuda:0; cuda:1: 3.9 GB, the default 90% of "
        "4.3 GB); raise server.memory_budget's cuda entry or use a smaller model"
    ]


def test_a_model_the_host_can_take_is_checked_on_the_host(write_config: WriteConfig) -> None:
    """device: auto may fall back to the host, so a GPU too small for it is no error."""
    config = write_config(
        SIMULATED + "models:\n  m: {loader: fake, device: auto, options: {device_bytes: 9GiB}}\n"
    )
    assert config.models["m"].device == "auto"


def test_device_bytes_need_a_gpu(tmp_path: Path) -> None:
    """The fake's device_bytes on a model that runs on the host is an options error."""
    assert problems_of(
        tmp_path, "models:\n  m: {loader: fake, options: {device_bytes: 1MB}}\n"
    ) == [
        "model 'm', field 'options': device_bytes claims memory on a GPU, but the model's "
        "device is 'cpu'; set device: cuda:N"
    ]


def test_gpu_models_without_gpus_are_left_to_their_load(write_config: WriteConfig) -> None:
    """No GPU present (nothing simulated, none on this machine): a cuda model is not
    refused by the config check, as before; its load says what is wrong."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = write_config("models:\n  m: {loader: fake, device: cuda:3}\n")
    assert config.models["m"].device == "cuda:3"


# ------------------------------------------------ the fake loader on a simulated GPU


def fake_ctx(config: Config, name: str, device: str | None = None) -> LoadContext:
    return LoadContext(name, config.models[name], None, config.base_dir, device)


def test_the_fake_claims_its_device_bytes_and_gives_them_back(
    write_config: WriteConfig, own_ledger: Path
) -> None:
    """A fake model with device_bytes claims them on its simulated GPU while loaded, grows
    by device_leak per call, and gives everything back when closed."""
    config = write_config(
        SIMULATED
        + "models:\n  m:\n    loader: fake\n    device: cuda:1\n"
        + "    options: {size: 1MB, device_bytes: 100MB, device_leak: 1MB}\n"
    )
    gpu1 = config_devices(config)[2]
    model = load_model(fake_ctx(config, "m"))
    assert isinstance(model, FakeModel)
    assert (model.device, model.device_bytes, model.size_bytes) == ("cuda:1", 100 * 10**6, 10**6)
    assert process_bytes(gpu1, os.getpid()) == 100 * 10**6
    model.predict(["a", "b"], {})
    model.predict(["c"], {})
    assert process_bytes(gpu1, os.getpid()) == 102 * 10**6 == model.device_bytes
    model.close()
    assert process_bytes(gpu1, os.getpid()) == 0
    assert ledger().claimed("cuda:1") == 0


def test_the_fake_claims_on_the_placed_device(write_config: WriteConfig, own_ledger: Path) -> None:
    """With device: cuda, the fake claims on the device placement chose (cuda:0 when none
    was chosen, as `cuda` means today)."""
    config = write_config(
        SIMULATED + "models:\n  m: {loader: fake, device: cuda, options: {device_bytes: 5MB}}\n"
    )
    placed = load_model(fake_ctx(config, "m", "cuda:1"))
    default = load_model(fake_ctx(config, "m"))
    assert isinstance(placed, FakeModel) and isinstance(default, FakeModel)
    assert (placed.device, default.device) == ("cuda:1", "cuda:0")
    placed.close()
    default.close()


SERVER = """
server:
  memory_budget: 200MB
  simulated_devices: {cuda:0: 1GB, cuda:1: 512MB}
  watch: false
  load_timeout: 60s
models:
  proc:
    loader: fake
    isolation: process
    device: cuda:1
    options: {size: 2MB, device_bytes: 300MB, device_leak: 10MB}
"""


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.usefixtures("forkserver")
async def test_a_worker_process_claim_is_seen_by_the_server(write_config: WriteConfig) -> None:
    """A process model's claim on a simulated GPU is made in its worker and read by the
    server under the worker's pid; it grows with requests, and is gone once the model is
    unloaded (the worker has ended)."""
    config = write_config(SERVER)
    gpu1 = config_devices(config)[2]
    async with running(config) as manager:
        await manager.predict("proc", TextRequest("x"))
        pid = manager.describe("proc").worker.pid
        assert isinstance(pid, int) and pid != os.getpid()
        assert process_bytes(gpu1, pid) == 310 * 10**6
        assert process_bytes(gpu1, os.getpid()) == 0
        await manager.predict("proc", TextRequest("y"))
        assert process_bytes(gpu1, pid) == 320 * 10**6
        await manager.unload("proc")
        await wait_until(lambda: process_bytes(gpu1, pid) == 0, "the worker's claim is gone")


@pytest.mark.anyio
async def test_a_thread_model_claim_is_the_servers_and_ends_with_its_unload(
    write_config: WriteConfig, own_ledger: Path
) -> None:
    """A fake model in the server's process claims its simulated GPU bytes under the
    server's pid through the real manager, and its unload gives them back."""
    config = write_config(
        SERVER.replace("isolation: process", "isolation: thread").replace(
            "device_leak: 10MB", "device_leak: 0"
        )
    )
    gpu1 = config_devices(config)[2]
    async with running(config) as manager:
        await manager.predict("proc", TextRequest("x"))
        assert process_bytes(gpu1, os.getpid()) == 300 * 10**6
        await manager.unload("proc")
        await wait_until(lambda: process_bytes(gpu1, os.getpid()) == 0, "the claim is gone")
