"""An ML2 mechanism driver for the dev cloud's Neutron (scripts/dev-cloud), which runs no agent.

Without a mechanism driver that binds them, the ports Nova asks to bind to its compute host end
`binding_failed` and the boot fails. This one binds every port on any host at once, as an Open
vSwitch port, and sets it ACTIVE as an agent would once it had wired it. It keeps no state, so
Neutron may be restarted at any time.

scripts/dev-cloud copies it onto the Neutron server's PYTHONPATH as `praas_dev_binding`, next to
an entry-points file that registers it as the mechanism driver `praas_dev_binding`.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindEverywhere(api.MechanismDriver):
    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
