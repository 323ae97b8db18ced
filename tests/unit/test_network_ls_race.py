"""A network removed while `network ls` is being taken is left out, not a 404 for the whole list: docker compose
removes a project's networks in parallel and lists them meanwhile (its `down` failed with "failed to list
networks: ... not found" under load). The real path is tests/api/test_compose.py's project lifecycle."""

from __future__ import annotations

import json
import os

from runner.engine import network
from runner.engine.engine import Engine


def test_a_network_removed_mid_list_is_skipped(tmp_path, monkeypatch):
    engine = Engine(str(tmp_path / "root"))
    nets = network.Networks(engine)
    os.makedirs(nets.dir, exist_ok=True)
    for i, name in enumerate(("alpha", "beta")):
        with open(nets._path(name), "w") as f:
            json.dump({"Name": name, "Id": f"{i:064x}", "Subnet": f"10.{200 + i}.0.0/24", "Gateway":
                       f"10.{200 + i}.0.1", "Bridge": f"rn-test{i}", "Created": 0, "Labels": {}}, f)
    real_inspect = network.Networks.inspect

    def inspect_while_beta_goes(self, name):
        if name == "beta":
            os.unlink(self._path("beta"))  # another request's `network rm` wins the race
        return real_inspect(self, name)
    monkeypatch.setattr(network.Networks, "inspect", inspect_while_beta_goes)
    assert [n["Name"] for n in engine.network_ls()] == ["alpha"]
