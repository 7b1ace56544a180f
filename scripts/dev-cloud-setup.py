"""Fills the dev cloud (scripts/dev-cloud) through the real Keystone, Neutron, Glance and Nova APIs.

`identity`: service users (`neutron`, `praas`, and with Nova `nova`, `placement`, `glance`),
the network, port-forwarding (and with Nova compute, placement and image) endpoints in the
catalog, projects `praas-a` and `praas-b` with member and reader users.
`network`: an external network, and per project a network and subnet, a router with a gateway
and an interface on that subnet, and two VM ports; for project A also a second network behind
a second router with a gateway, a network not attached to any router and a router without
gateway. With Nova, a flavor and an image (as admin) and servers booted by the projects'
members (see `SERVERS`). Writes clouds.yaml and resources.json.

With --neutron-ovn, a second Neutron on ML2/OVN: `identity` puts it in the catalog as the
network service of region RegionOVN (next to the identity and port-forwarding endpoints), and
`network` creates in it what `ovn_network` says, under the key `ovn` of resources.json, with
clouds `<name>-ovn` in that region. Without, RegionOVN is taken out of the catalog.

Idempotent: everything is looked up by name before it is created.
"""

import argparse
import copy
import json
import os
import sys
import time

import requests

ROLES = ("admin", "member", "reader", "service")

# The servers each project's member boots, by name, with the networks of their NICs in order
# (keys of the project's entry in resources.json: `network_id`, `second_network`,
# `unrouted`). A name given twice is booted twice.
SERVERS = {
    "a": [
        # One NIC, on the network of router-a: the router follows from the server.
        ("server-a1", ["network"]),
        # Two NICs, each behind a router with a gateway: which one is meant is ambiguous.
        ("server-a2", ["network", "second_network"]),
        # Two NICs, only the first behind a router.
        ("server-a3", ["network", "unrouted"]),
        # One name, two servers.
        ("server-twin", ["network"]),
        ("server-twin", ["network"]),
    ],
    "b": [("server-b1", ["network"])],
}
FLAVOR = "praas-tiny"
IMAGE = "praas-tiny"
# Nova's API as the servers are read and booted here (networks are required from 2.37 on).
COMPUTE_VERSION = {"OpenStack-API-Version": "compute 2.79"}
# The region of the OVN Neutron; the rest of the catalog is in RegionOne.
OVN_REGION = "RegionOVN"


class Cloud:
    def __init__(self, keystone, neutron, password, nova=None, glance=None):
        self.keystone = keystone
        self.neutron = neutron
        self.nova = nova
        self.glance = glance
        self.password = password
        self.admin = self.token("admin", "admin")

    def token(self, user, project):
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": user,
                            "domain": {"id": "default"},
                            "password": self.password,
                        }
                    },
                },
                "scope": {"project": {"name": project, "domain": {"id": "default"}}},
            }
        }
        r = requests.post(f"{self.keystone}/auth/tokens?nocatalog", json=body, timeout=30)
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def call(self, method, url, token=None, **kw):
        headers = {"X-Auth-Token": token or self.admin, **kw.pop("headers", {})}
        r = requests.request(method, url, headers=headers, timeout=60, **kw)
        if r.status_code >= 400:
            sys.exit(f"dev-cloud-setup: {method} {url}: {r.status_code} {r.text}")
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else None

    # Keystone

    def ks(self, method, path, **kw):
        return self.call(method, f"{self.keystone}{path}", **kw)

    def find_or_create(self, collection, key, name, body, **filters):
        params = {"name": name, **filters}
        found = self.ks("GET", f"/{collection}", params=params)[collection]
        if found:
            return found[0]
        return self.ks("POST", f"/{collection}", json={key: body})[key]

    def project(self, name):
        return self.find_or_create(
            "projects", "project", name, {"name": name, "domain_id": "default"}
        )

    def user(self, name, project):
        return self.find_or_create(
            "users",
            "user",
            name,
            {
                "name": name,
                "domain_id": "default",
                "password": self.password,
                "default_project_id": project["id"],
            },
        )

    def role(self, name):
        return self.find_or_create("roles", "role", name, {"name": name})

    def grant(self, user, project, role):
        self.ks("PUT", f"/projects/{project['id']}/users/{user['id']}/roles/{role['id']}")

    # Neutron

    def nt(self, method, path, token=None, **kw):
        return self.call(method, f"{self.neutron}/v2.0{path}", token=token, **kw)

    def neutron_find_or_create(self, collection, key, body, token=None, **filters):
        params = {"name": body["name"], **filters}
        found = self.nt("GET", f"/{collection}", token=token, params=params)[collection]
        if found:
            return found[0]
        return self.nt("POST", f"/{collection}", token=token, json={key: body})[key]

    # Nova and Glance

    def nv(self, method, path, token=None, **kw):
        headers = {**COMPUTE_VERSION, **kw.pop("headers", {})}
        return self.call(method, f"{self.nova}{path}", token=token, headers=headers, **kw)

    def gl(self, method, path, token=None, **kw):
        return self.call(method, f"{self.glance}/v2{path}", token=token, **kw)


def identity(cloud, args):
    roles = {name: cloud.role(name) for name in ROLES}
    service = cloud.project("service")
    users = ["neutron", "praas"] + (["nova", "placement", "glance"] if args.nova else [])
    for name in users:
        user = cloud.user(name, service)
        cloud.grant(user, service, roles["admin"])
        cloud.grant(user, service, roles["service"])
    register(cloud, "network", "neutron", args.neutron)
    if args.neutron_ovn:
        if not any(r["id"] == OVN_REGION for r in cloud.ks("GET", "/regions")["regions"]):
            cloud.ks("POST", "/regions", json={"region": {"id": OVN_REGION}})
        register(cloud, "network", "neutron", args.neutron_ovn, OVN_REGION)
        # So that a client of RegionOVN finds Keystone and PRaaS too.
        register(cloud, "identity", "keystone", args.keystone, OVN_REGION)
        register(cloud, "port-forwarding", "praas", args.praas, OVN_REGION)
    else:
        unregister_region(cloud, OVN_REGION)
    compute = {"compute": ("nova", args.nova), "placement": ("placement", args.placement),
               "image": ("glance", args.glance)}
    for service_type, (name, url) in compute.items():
        if args.nova:
            register(cloud, service_type, name, url)
        else:
            # A cloud without Nova does not say it has one (clients go by the catalog).
            unregister(cloud, service_type)
    # PRaaS itself, so that `praas pat` finds it from a token without --url (the tests serve
    # it there; nothing listens on that port otherwise).
    register(cloud, "port-forwarding", "praas", args.praas)
    application_credential(cloud, args)
    for p in ("a", "b"):
        project = cloud.project(f"praas-{p}")
        for role in ("member", "reader"):
            user = cloud.user(f"{p}-{role}", project)
            cloud.grant(user, project, roles[role])
            if role == "member":
                # As Keystone's implied roles would: a member may read.
                cloud.grant(user, project, roles["reader"])


def register(cloud, service_type, name, url, region="RegionOne"):
    """The service of `service_type` in the catalog, with a public, internal and admin endpoint
    at `url` in `region` (those missing are added)."""
    found = cloud.ks("GET", "/services", params={"type": service_type})["services"]
    if not found:
        found = [
            cloud.ks(
                "POST",
                "/services",
                json={"service": {"type": service_type, "name": name, "enabled": True}},
            )["service"]
        ]
    endpoints = cloud.ks("GET", "/endpoints", params={"service_id": found[0]["id"]})[
        "endpoints"
    ]
    have = {e["interface"] for e in endpoints if e["region_id"] == region}
    for interface in ("public", "internal", "admin"):
        if interface not in have:
            cloud.ks(
                "POST",
                "/endpoints",
                json={
                    "endpoint": {
                        "service_id": found[0]["id"],
                        "interface": interface,
                        "url": url,
                        "region_id": region,
                    }
                },
            )


def unregister(cloud, service_type):
    """No service of `service_type` in the catalog (its endpoints go with it)."""
    for service in cloud.ks("GET", "/services", params={"type": service_type})["services"]:
        endpoints = cloud.ks("GET", "/endpoints", params={"service_id": service["id"]})
        for endpoint in endpoints["endpoints"]:
            cloud.ks("DELETE", f"/endpoints/{endpoint['id']}")
        cloud.ks("DELETE", f"/services/{service['id']}")


def unregister_region(cloud, region):
    """No endpoint in `region`, and no such region."""
    for endpoint in cloud.ks("GET", "/endpoints")["endpoints"]:
        if endpoint["region_id"] == region:
            cloud.ks("DELETE", f"/endpoints/{endpoint['id']}")
    if any(r["id"] == region for r in cloud.ks("GET", "/regions")["regions"]):
        cloud.ks("DELETE", f"/regions/{region}")


def application_credential(cloud, args):
    """An application credential of the PRaaS service user (its secret is shown only once,
    so it is recreated on every run)."""
    token = cloud.token("praas", "service")
    user_id = cloud.ks("GET", "/auth/tokens", token=token, headers={"X-Subject-Token": token})
    user_id = user_id["token"]["user"]["id"]
    name = "praas-service"
    found = cloud.ks(
        "GET", f"/users/{user_id}/application_credentials", token=token, params={"name": name}
    )["application_credentials"]
    for old in found:
        cloud.ks("DELETE", f"/users/{user_id}/application_credentials/{old['id']}", token=token)
    made = cloud.ks(
        "POST",
        f"/users/{user_id}/application_credentials",
        token=token,
        json={"application_credential": {"name": name}},
    )["application_credential"]
    with open(os.path.join(args.state, "appcred.json"), "w") as f:
        json.dump({"id": made["id"], "name": name, "secret": made["secret"]}, f)


def network(cloud, args):
    resources = {
        "keystone": args.keystone,
        "neutron": args.neutron,
        "praas": args.praas,
        "projects": {},
    }
    public = cloud.neutron_find_or_create(
        "networks",
        "network",
        {
            "name": "public",
            "router:external": True,
            "provider:network_type": "flat",
            "provider:physical_network": "public",
            "shared": False,
        },
    )
    public_subnet = cloud.neutron_find_or_create(
        "subnets",
        "subnet",
        {
            "name": "public-subnet",
            "network_id": public["id"],
            "ip_version": 4,
            "cidr": "203.0.113.0/24",
            "gateway_ip": "203.0.113.1",
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.250"}],
            "enable_dhcp": False,
        },
    )
    resources["external_network"] = {
        "id": public["id"],
        "subnet_id": public_subnet["id"],
        "cidr": public_subnet["cidr"],
        "gateway_ip": public_subnet["gateway_ip"],
    }
    for index, p in enumerate(("a", "b")):
        token = cloud.token(f"{p}-member", f"praas-{p}")
        project = cloud.ks("GET", "/projects", params={"name": f"praas-{p}"})["projects"][0]
        net = cloud.neutron_find_or_create(
            "networks", "network", {"name": f"net-{p}"}, token=token
        )
        cidr = f"10.{10 + index * 10}.0.0/24"
        subnet = cloud.neutron_find_or_create(
            "subnets",
            "subnet",
            {
                "name": f"subnet-{p}",
                "network_id": net["id"],
                "ip_version": 4,
                "cidr": cidr,
                "enable_dhcp": False,
            },
            token=token,
        )
        router = cloud.neutron_find_or_create(
            "routers",
            "router",
            {"name": f"router-{p}", "external_gateway_info": {"network_id": public["id"]}},
            token=token,
        )
        interfaces = cloud.nt(
            "GET",
            "/ports",
            token=token,
            params={"device_id": router["id"], "network_id": net["id"]},
        )["ports"]
        if not interfaces:
            cloud.nt(
                "PUT",
                f"/routers/{router['id']}/add_router_interface",
                token=token,
                json={"subnet_id": subnet["id"]},
            )
        router = cloud.nt("GET", f"/routers/{router['id']}", token=token)["router"]
        vms = []
        for n in (1, 2):
            port = cloud.neutron_find_or_create(
                "ports",
                "port",
                {
                    "name": f"vm-{p}{n}",
                    "network_id": net["id"],
                    "device_id": f"vm-{p}{n}",
                    "device_owner": "compute:nova",
                },
                token=token,
            )
            vms.append(
                {
                    "port_id": port["id"],
                    "ip": port["fixed_ips"][0]["ip_address"],
                    "mac": port["mac_address"],
                }
            )
        entry = {
            "project_id": project["id"],
            "network_id": net["id"],
            "subnet_id": subnet["id"],
            "cidr": cidr,
            "router_id": router["id"],
            "router_gateway_ip": router["external_gateway_info"]["external_fixed_ips"][0][
                "ip_address"
            ],
            "router_interface_ip": subnet["gateway_ip"],
            "vms": vms,
        }
        if p == "a":
            # A network no router serves, and a router with no gateway.
            lonely = cloud.neutron_find_or_create(
                "networks", "network", {"name": "net-a-unrouted"}, token=token
            )
            lonely_subnet = cloud.neutron_find_or_create(
                "subnets",
                "subnet",
                {
                    "name": "subnet-a-unrouted",
                    "network_id": lonely["id"],
                    "ip_version": 4,
                    "cidr": "10.11.0.0/24",
                    "enable_dhcp": False,
                },
                token=token,
            )
            port = cloud.neutron_find_or_create(
                "ports",
                "port",
                {
                    "name": "vm-a-unrouted",
                    "network_id": lonely["id"],
                    "device_id": "vm-a-unrouted",
                    "device_owner": "compute:nova",
                },
                token=token,
            )
            no_gateway = cloud.neutron_find_or_create(
                "routers", "router", {"name": "router-a-no-gateway"}, token=token
            )
            entry["unrouted"] = {
                "subnet_id": lonely_subnet["id"],
                "port_id": port["id"],
                "ip": port["fixed_ips"][0]["ip_address"],
            }
            entry["router_without_gateway_id"] = no_gateway["id"]
            # A distributed router (only an admin may ask for one): its mappings belong in
            # the snat- namespace.
            dvr = cloud.neutron_find_or_create(
                "routers",
                "router",
                {
                    "name": "router-a-dvr",
                    "project_id": project["id"],
                    "distributed": True,
                    "external_gateway_info": {"network_id": public["id"]},
                },
            )
            entry["distributed_router_id"] = dvr["id"]
            entry["second_network"] = routed_network(
                cloud, token, public, "a-second", "10.12.0.0/24"
            )
        resources["projects"][p] = entry
    if args.nova:
        resources["nova"] = args.nova
        resources["glance"] = args.glance
        resources["placement"] = args.placement
        flavor, image = flavor_and_image(cloud)
        resources["flavor"] = {"id": flavor["id"], "name": flavor["name"]}
        resources["image"] = {"id": image["id"], "name": image["name"]}
        for p, entry in resources["projects"].items():
            entry["servers"] = servers(cloud, p, entry, flavor, image)
    if args.neutron_ovn:
        resources["ovn"] = ovn_network(cloud, args)

    clouds = {"clouds": {}}

    def cloud_entry(user, project, region="RegionOne"):
        return {
            "auth": {
                "auth_url": args.keystone.rsplit("/v3", 1)[0],
                "username": user,
                "password": cloud.password,
                "project_name": project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": region,
            "interface": "public",
            "identity_api_version": 3,
        }

    clouds["clouds"]["openstack"] = cloud_entry("praas", "service")
    with open(os.path.join(args.state, "appcred.json")) as f:
        appcred = json.load(f)
    auth_url = args.keystone.rsplit("/v3", 1)[0]
    clouds["clouds"]["openstack-appcred-id"] = {
        "auth_type": "v3applicationcredential",
        "auth": {
            "auth_url": auth_url,
            "application_credential_id": appcred["id"],
            "application_credential_secret": appcred["secret"],
        },
        "region_name": "RegionOne",
    }
    clouds["clouds"]["openstack-appcred-name"] = {
        "auth_type": "v3applicationcredential",
        "auth": {
            "auth_url": auth_url,
            "application_credential_name": appcred["name"],
            "application_credential_secret": appcred["secret"],
            "username": "praas",
            "user_domain_name": "Default",
        },
        "region_name": "RegionOne",
    }
    clouds["clouds"]["admin"] = cloud_entry("admin", "admin")
    for p in ("a", "b"):
        for role in ("member", "reader"):
            clouds["clouds"][f"{p}-{role}"] = cloud_entry(f"{p}-{role}", f"praas-{p}")
    if args.neutron_ovn:
        # The same users, in the region of the OVN Neutron.
        ovn_users = [("openstack", "praas", "service"), ("admin", "admin", "admin")] + [
            (f"{p}-{role}", f"{p}-{role}", f"praas-{p}")
            for p in ("a", "b")
            for role in ("member", "reader")
        ]
        for name, user, project in ovn_users:
            clouds["clouds"][f"{name}-ovn"] = cloud_entry(user, project, OVN_REGION)
    # JSON is YAML: no YAML library needed here.
    with open(os.path.join(args.state, "clouds.yaml"), "w") as f:
        json.dump(clouds, f, indent=2)
    # Whole or not at all: tests read it while a restart of theirs runs `up`.
    path = os.path.join(args.state, "resources.json")
    with open(path + ".new", "w") as f:
        json.dump(resources, f, indent=2)
    os.replace(path + ".new", path)


def ovn_network(cloud, args):
    """In the OVN Neutron: an external flat network on physnet1, and per project a geneve
    network and subnet behind a router with a gateway, a security group and two VM ports
    bound to the chassis `args.ovn_chassis`. Its `resources.json` entry."""
    ovn = copy.copy(cloud)
    ovn.neutron = args.neutron_ovn
    public = ovn.neutron_find_or_create(
        "networks",
        "network",
        {
            "name": "public",
            "router:external": True,
            "provider:network_type": "flat",
            "provider:physical_network": "physnet1",
            "shared": False,
        },
    )
    # Router gateways from .100 to .199: the rest of the range is left to the tests' clients.
    public_subnet = ovn.neutron_find_or_create(
        "subnets",
        "subnet",
        {
            "name": "public-subnet",
            "network_id": public["id"],
            "ip_version": 4,
            "cidr": "203.0.113.0/24",
            "gateway_ip": "203.0.113.1",
            "allocation_pools": [{"start": "203.0.113.100", "end": "203.0.113.199"}],
            "enable_dhcp": False,
        },
    )
    result = {
        "neutron": args.neutron_ovn,
        "region": OVN_REGION,
        "exchange": "neutron_ovn",
        "chassis": args.ovn_chassis,
        "external_network": {
            "id": public["id"],
            "subnet_id": public_subnet["id"],
            "cidr": public_subnet["cidr"],
            "gateway_ip": public_subnet["gateway_ip"],
            "physical_network": "physnet1",
        },
        "projects": {},
    }
    for index, p in enumerate(("a", "b")):
        token = ovn.token(f"{p}-member", f"praas-{p}")
        project = ovn.ks("GET", "/projects", params={"name": f"praas-{p}"})["projects"][0]
        net = ovn.neutron_find_or_create("networks", "network", {"name": f"net-{p}"}, token=token)
        # Apart from the ML2 cloud's 10.10-10.20: the test harness may build both side by side.
        cidr = f"10.{110 + index * 10}.0.0/24"
        subnet = ovn.neutron_find_or_create(
            "subnets",
            "subnet",
            {
                "name": f"subnet-{p}",
                "network_id": net["id"],
                "ip_version": 4,
                "cidr": cidr,
                "enable_dhcp": False,
            },
            token=token,
        )
        router = ovn.neutron_find_or_create(
            "routers",
            "router",
            {"name": f"router-{p}", "external_gateway_info": {"network_id": public["id"]}},
            token=token,
        )
        interfaces = ovn.nt(
            "GET",
            "/ports",
            token=token,
            params={"device_id": router["id"], "network_id": net["id"]},
        )["ports"]
        if not interfaces:
            ovn.nt(
                "PUT",
                f"/routers/{router['id']}/add_router_interface",
                token=token,
                json={"subnet_id": subnet["id"]},
            )
            interfaces = ovn.nt(
                "GET",
                "/ports",
                token=token,
                params={"device_id": router["id"], "network_id": net["id"]},
            )["ports"]
        router = ovn.nt("GET", f"/routers/{router['id']}", token=token)["router"]
        # The gateway port is the admin's to see (it belongs to no project).
        gateway = ovn.nt(
            "GET",
            "/ports",
            params={"device_id": router["id"], "device_owner": "network:router_gateway"},
        )["ports"][0]
        group = vm_security_group(ovn, token, p)
        vms = [
            vm_port(ovn, token, args.ovn_chassis, net, group, f"vm-{p}{n}") for n in (1, 2)
        ]
        network = ovn.nt("GET", f"/networks/{net['id']}")["network"]
        result["projects"][p] = {
            "project_id": project["id"],
            "network_id": net["id"],
            "segmentation_id": network["provider:segmentation_id"],
            "subnet_id": subnet["id"],
            "cidr": cidr,
            "router_id": router["id"],
            "router_gateway_ip": gateway["fixed_ips"][0]["ip_address"],
            "router_gateway_port_id": gateway["id"],
            "router_gateway_mac": gateway["mac_address"],
            "router_interface_ip": subnet["gateway_ip"],
            "router_interface_port_id": interfaces[0]["id"],
            "router_interface_mac": interfaces[0]["mac_address"],
            "security_group_id": group["id"],
            "vms": vms,
        }
    return result


def vm_security_group(ovn, token, p):
    """Project `p`'s security group `vm-ingress`, which lets any TCP, UDP and ICMP over IPv4
    in (and, as every new group, anything out).

    Rather than ports without port security: so the NB holds what a real cloud's VM ports
    have (port_security addresses, the group's Port_Group and ACLs, neutron_pg_drop), and
    forwarded traffic passes the ACLs a user's would."""
    name = "vm-ingress"
    found = ovn.nt("GET", "/security-groups", token=token, params={"name": name})
    if found["security_groups"]:
        group = found["security_groups"][0]
    else:
        body = {"name": name, "description": "TCP, UDP and ICMP in from anywhere"}
        group = ovn.nt("POST", "/security-groups", token=token, json={"security_group": body})[
            "security_group"
        ]
    have = {
        (r["direction"], r["ethertype"], r["protocol"])
        for r in ovn.nt(
            "GET", "/security-group-rules", token=token, params={"security_group_id": group["id"]}
        )["security_group_rules"]
    }
    for protocol in ("tcp", "udp", "icmp"):
        if ("ingress", "IPv4", protocol) not in have:
            ovn.nt(
                "POST",
                "/security-group-rules",
                token=token,
                json={
                    "security_group_rule": {
                        "security_group_id": group["id"],
                        "direction": "ingress",
                        "ethertype": "IPv4",
                        "protocol": protocol,
                        "remote_ip_prefix": "0.0.0.0/0",
                    }
                },
            )
    return group


def vm_port(ovn, token, chassis, net, group, name):
    """A VM port `name` on `net` in security group `group`, made by the project's member and
    bound to `chassis` by the admin (only an admin may set binding:host_id)."""
    port = ovn.neutron_find_or_create(
        "ports",
        "port",
        {
            "name": name,
            "network_id": net["id"],
            "device_id": name,
            "device_owner": "compute:nova",
            "security_groups": [group["id"]],
        },
        token=token,
    )
    if port["security_groups"] != [group["id"]]:
        body = {"port": {"security_groups": [group["id"]]}}
        ovn.nt("PUT", f"/ports/{port['id']}", token=token, json=body)
    port = ovn.nt("GET", f"/ports/{port['id']}")["port"]
    if port["binding:host_id"] != chassis or port["binding:vif_type"] != "ovs":
        # Set anew, since ML2 binds a port again only when something of it changes.
        if port["binding:host_id"] == chassis:
            ovn.nt("PUT", f"/ports/{port['id']}", json={"port": {"binding:host_id": ""}})
        body = {"port": {"binding:host_id": chassis}}
        port = ovn.nt("PUT", f"/ports/{port['id']}", json=body)["port"]
    if port["binding:vif_type"] != "ovs":
        sys.exit(
            f"dev-cloud-setup: port {name} ({port['id']}) of the OVN Neutron is "
            f"{port['binding:vif_type']} on {chassis}: Neutron binds only to a chassis it has "
            "seen alive, of that hostname (the ovn-controller of scripts/ovn)"
        )
    return {
        "port_id": port["id"],
        "ip": port["fixed_ips"][0]["ip_address"],
        "mac": port["mac_address"],
    }


def routed_network(cloud, token, public, name, cidr):
    """A network `net-<name>` with a subnet, behind a router `router-<name>` of its own with a
    gateway on `public`."""
    net = cloud.neutron_find_or_create("networks", "network", {"name": f"net-{name}"}, token=token)
    subnet = cloud.neutron_find_or_create(
        "subnets",
        "subnet",
        {
            "name": f"subnet-{name}",
            "network_id": net["id"],
            "ip_version": 4,
            "cidr": cidr,
            "enable_dhcp": False,
        },
        token=token,
    )
    router = cloud.neutron_find_or_create(
        "routers",
        "router",
        {"name": f"router-{name}", "external_gateway_info": {"network_id": public["id"]}},
        token=token,
    )
    interfaces = cloud.nt(
        "GET", "/ports", token=token, params={"device_id": router["id"], "network_id": net["id"]}
    )["ports"]
    if not interfaces:
        cloud.nt(
            "PUT",
            f"/routers/{router['id']}/add_router_interface",
            token=token,
            json={"subnet_id": subnet["id"]},
        )
    router = cloud.nt("GET", f"/routers/{router['id']}", token=token)["router"]
    return {
        "network_id": net["id"],
        "subnet_id": subnet["id"],
        "cidr": cidr,
        "router_id": router["id"],
        "router_gateway_ip": router["external_gateway_info"]["external_fixed_ips"][0][
            "ip_address"
        ],
        "router_interface_ip": subnet["gateway_ip"],
    }


def flavor_and_image(cloud):
    """A public flavor (disk 1: Nova refuses disk 0 for servers booted from an image) and a
    public 1 KiB raw image, which the fake virt driver never reads."""
    flavors = cloud.nv("GET", "/flavors/detail", params={"is_public": "None"})["flavors"]
    flavor = next((f for f in flavors if f["name"] == FLAVOR), None)
    if flavor is None:
        flavor = cloud.nv(
            "POST",
            "/flavors",
            json={"flavor": {"name": FLAVOR, "ram": 64, "vcpus": 1, "disk": 1}},
        )["flavor"]
    images = cloud.gl("GET", "/images", params={"name": IMAGE})["images"]
    for image in images:
        if image["status"] == "active":
            return flavor, image
        # An upload that did not finish.
        cloud.gl("DELETE", f"/images/{image['id']}")
    image = cloud.gl(
        "POST",
        "/images",
        json={
            "name": IMAGE,
            "disk_format": "raw",
            "container_format": "bare",
            "visibility": "public",
        },
    )
    cloud.gl(
        "PUT",
        f"/images/{image['id']}/file",
        data=bytes(1024),
        headers={"Content-Type": "application/octet-stream"},
    )
    return flavor, cloud.gl("GET", f"/images/{image['id']}")


def servers(cloud, p, entry, flavor, image):
    """Project `p`'s servers of `SERVERS`, booted by its member where missing (or replaced
    where their NICs are not the ones wanted, or their boot failed), each with its NICs in
    order: [{"name", "id", "ports": [{"port_id", "network_id", "subnet_id", "ip", "mac"}]}]."""
    token = cloud.token(f"{p}-member", f"praas-{p}")

    def network_of(key):
        return entry["network_id"] if key == "network" else network_id(cloud, token, entry[key])

    def nics(server_id):
        return cloud.nt("GET", "/ports", token=token, params={"device_id": server_id})["ports"]

    wanted = {}
    for name, keys in SERVERS[p]:
        wanted.setdefault(name, []).append([network_of(k) for k in keys])
    found = cloud.nv("GET", "/servers/detail", token=token)["servers"]
    kept, booting = [], []
    for name, layouts in wanted.items():
        have = [s for s in found if s["name"] == name]
        for server in have:
            networks = sorted(port["network_id"] for port in nics(server["id"]))
            layout = next((l for l in layouts if sorted(l) == networks), None)
            if server["status"] in ("ACTIVE", "BUILD") and layout is not None:
                layouts.remove(layout)
                kept.append((server["id"], layout))
            else:
                delete_server(cloud, token, server["id"])
        for layout in layouts:
            body = {
                "server": {
                    "name": name,
                    "flavorRef": flavor["id"],
                    "imageRef": image["id"],
                    "networks": [{"uuid": n} for n in layout],
                }
            }
            made = cloud.nv("POST", "/servers", token=token, json=body)["server"]
            booting.append((made["id"], layout))
    result = []
    for server_id, layout in kept + booting:
        server = wait_active(cloud, token, server_id)
        ports = nics(server_id)
        ordered = []
        for network in layout:
            port = next(port for port in ports if port["network_id"] == network)
            ports.remove(port)
            ordered.append(
                {
                    "port_id": port["id"],
                    "network_id": network,
                    "subnet_id": port["fixed_ips"][0]["subnet_id"],
                    "ip": port["fixed_ips"][0]["ip_address"],
                    "mac": port["mac_address"],
                }
            )
        result.append({"name": server["name"], "id": server_id, "ports": ordered})
    order = [name for name, _ in SERVERS[p]]
    return sorted(result, key=lambda s: (order.index(s["name"]), s["id"]))


def network_id(cloud, token, network):
    """The network of `network` (an entry of resources.json with a subnet)."""
    if "network_id" in network:
        return network["network_id"]
    subnet = cloud.nt("GET", f"/subnets/{network['subnet_id']}", token=token)["subnet"]
    return subnet["network_id"]


def wait_active(cloud, token, server_id, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        server = cloud.nv("GET", f"/servers/{server_id}", token=token)["server"]
        if server["status"] == "ACTIVE":
            return server
        if server["status"] == "ERROR" or time.monotonic() > deadline:
            sys.exit(
                f"dev-cloud-setup: server {server['name']} ({server_id}) is {server['status']}: "
                f"{server.get('fault', {}).get('message', 'no fault given')}"
            )
        time.sleep(0.5)


def delete_server(cloud, token, server_id, timeout=60):
    cloud.nv("DELETE", f"/servers/{server_id}", token=token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(
            f"{cloud.nova}/servers/{server_id}",
            headers={"X-Auth-Token": token, **COMPUTE_VERSION},
            timeout=30,
        )
        if r.status_code == 404:
            return
        time.sleep(0.5)
    sys.exit(f"dev-cloud-setup: server {server_id} was not deleted in {timeout} s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("identity", "network"))
    parser.add_argument("--state", required=True)
    parser.add_argument("--keystone", required=True)
    parser.add_argument("--neutron", required=True)
    parser.add_argument("--praas", default="http://127.0.0.1:3300")
    parser.add_argument("--password", required=True)
    parser.add_argument("--nova", help="Nova's API (v2.1); none: a cloud without Nova")
    parser.add_argument("--placement")
    parser.add_argument("--glance")
    parser.add_argument("--neutron-ovn", help="the OVN Neutron's API; none: no OVN Neutron")
    parser.add_argument("--ovn-chassis", default="praas-chassis-1")
    args = parser.parse_args()
    if args.nova and not (args.placement and args.glance):
        parser.error("--nova needs --placement and --glance")
    cloud = Cloud(args.keystone, args.neutron, args.password, nova=args.nova, glance=args.glance)
    {"identity": identity, "network": network}[args.step](cloud, args)


if __name__ == "__main__":
    main()
