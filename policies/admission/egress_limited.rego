# Egress policy set: a VM either has no network (network.enabled false, or network.isolated)
# or a bandwidth limit on what it sends (network.egress_mbit). Warn by default, as VMs created
# without network flags have neither: apply this policy in mode deny to require it.
package firefleet.admission.egress_limited

import rego.v1

enforcement := "warn"

network := object.get(input, ["vm", "network"], {})

deny contains msg if {
	input.vm
	object.get(network, "enabled", true) == true
	object.get(network, "isolated", false) == false
	object.get(network, "egress_mbit", null) == null
	msg := "network.egress_mbit is not set: a VM with a network needs an egress bandwidth limit (or network.enabled false)"
}

test_default_network_is_flagged if {
	count(deny) == 1 with input as {"vm": {"name": "web"}}
}

test_egress_limit_passes if {
	count(deny) == 0 with input as {"vm": {"network": {"enabled": true, "egress_mbit": 100}}}
}

test_no_network_passes if {
	count(deny) == 0 with input as {"vm": {"network": {"enabled": false}}}
}

test_isolated_passes if {
	count(deny) == 0 with input as {"vm": {"network": {"isolated": true}}}
}
