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
(kills its daemon, agent and exe-units 1 s into its first `run`).

Timing measured on a loaded 2-core machine (yagna 0.17.6, yapapi 0.13.1):
start-up of a router, a requestor and 5 providers ~10-15 s; a one-task yapapi
job from `Golem()` to context exit ~7-13 s (offers are re-broadcast every ~2 s;
the invoice is issued ~20 ms after the agreement ends and shows ACCEPTED on
the provider ~0.5-1 s later, before yapapi leaves its context). A provider
that dies or is killed while a command runs surfaces ~13-17 s later as
`ya_activity.ApiException` (HTTP 500) thrown into the worker at `yield
script`; one that dies while the batch is being handed over (the Exec call)
fails the worker outside the generator instead (yapapi event `WorkerFinished`
with `exc_info`, ApiException 408, ~6 s; the task is retried elsewhere).
After either, leaving the `Golem` context takes ~30 s more: yapapi waits for
an invoice that never comes.
"""

from tests.golemnet.agent import BEHAVIOURS, Price, ProviderSpec
from tests.golemnet.network import GolemNetwork, Provider

__all__ = ["BEHAVIOURS", "GolemNetwork", "Price", "Provider", "ProviderSpec"]
