"""golemnet: a PROTOCOL-LEVEL Golem test network on loopback, for tests.

What is real: the `yagna` 0.17 daemons (from the golem-node wheel; a router,
a requestor and one per provider, joined in a `central` net on 127.0.0.1) and
the requestor's yapapi code. What is simulated: the provider agent (a script
over the provider daemon's REST API) and the exe-unit (a stand-in speaking the
service-bus protocol that runs commands ON THIS MACHINE, unisolated, with
`/golem/...` paths mapped to a folder per activity), and `gftp` (a stand-in
that maps URLs to local files). This is not execution on Golem.

    from tests.golemnet import GolemNetwork, ProviderSpec, Price

    with GolemNetwork(root=tmp_path, subnet="jfedrl-test", providers=[
        ProviderSpec("p0"),
        ProviderSpec("p1", behaviour="fail", price=Price(per_hour=0.5)),
    ]) as net:
        net.requestor_env  # YAGNA_API_URL, YAGNA_APPKEY, YAGNA_SUBNET,
                           # YAGNA_DEV_SKIP_ALLOCATION_VALIDATION=1,
                           # YAGNA_PAYMENT_DRIVER/NETWORK, PATH (gftp stand-in first)
        net.app_key        # the requestor's app key
        net.providers[0].node_id, .name, .alive, .kill(), .stats
        net.provider("p1")
        net.wait_for(lambda: ..., timeout=30)   # returns the truthy value
        net.log_paths()    # every daemon / agent / exe-unit log
        net.startup_seconds

`stats` (a fresh snapshot each time) holds: offers, proposals (countered),
agreements (approved), activities, destroyed_activities, commands (every
exe-script command with its args and outcome, in time order), runs (the argv
of every `run` as the requestor sent it; `commands` also holds the
`local_argv` actually executed, /golem mapped to the activity dir), invoices (id,
agreement_id, amount, status), invoices_issued, invoices_accepted,
amount_invoiced, amount_accepted, debit_notes, debit_notes_accepted,
terminations ({agreement id: terminator, reason}), errors (agent faults),
died.

Behaviours (`ProviderSpec.behaviour`): "ok"; "fail" (every `run` exits 1
with a message on stderr); "corrupt" (flips one byte of every file the
requestor downloads); "truncate" (halves every downloaded file); "die"
(kills its daemon, agent and exe-units at its first `run`).
"""

from tests.golemnet.agent import BEHAVIOURS, Price, ProviderSpec
from tests.golemnet.network import GolemNetwork, Provider

__all__ = ["BEHAVIOURS", "GolemNetwork", "Price", "Provider", "ProviderSpec"]
