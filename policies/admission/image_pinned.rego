# Images are pinned by digest: a VM (or a function) names its image as sha256:<64 hex>, never
# by a mutable name, so what runs is exactly what was reviewed.
package firefleet.admission.image_pinned

import rego.v1

digest_pattern := `^sha256:[0-9a-f]{64}$`

deny contains msg if {
	image := object.get(input, ["vm", "image"], null)
	image != null
	not pinned(image)
	msg := sprintf("image %v is not pinned by digest (want sha256:<64 lowercase hex>)", [json.marshal(image)])
}

deny contains msg if {
	image := object.get(input, ["function", "image"], null)
	image != null
	not pinned(image)
	msg := sprintf("function image %v is not pinned by digest (want sha256:<64 lowercase hex>)", [json.marshal(image)])
}

pinned(image) if {
	is_string(image)
	regex.match(digest_pattern, image)
}

digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

test_pinned_image_passes if {
	count(deny) == 0 with input as {"vm": {"image": digest}}
}

test_tag_is_denied if {
	deny["image \"alpine:3.20\" is not pinned by digest (want sha256:<64 lowercase hex>)"] with input as {"vm": {"image": "alpine:3.20"}}
}

test_short_digest_is_denied if {
	count(deny) == 1 with input as {"vm": {"image": "sha256:abcd"}}
}

test_uppercase_digest_is_denied if {
	count(deny) == 1 with input as {"vm": {"image": upper(digest)}}
}

test_function_image_is_checked if {
	count(deny) == 1 with input as {"vm": {"image": digest}, "function": {"image": "latest"}}
}

test_no_vm_no_violation if {
	count(deny) == 0 with input as {"tenant": {"id": "acme"}}
}
