"""Fills the dev cloud (scripts/dev-cloud) through the real Keystone and Neutron APIs.

`identity`: service users (`neutron`, `praas`), the network and port-forwarding endpoints in the
catalog, projects `praas-a` and `praas-b` with member and reader users.
`network`: an external network, and per project a network and subnet, a router with a gateway
and an interface on that subnet, and two VM ports; for project A also a second network not
attached to any router and a router without gateway. Writes clouds.yaml and resources.json.

Idempotent: everything is looked up by name before it is created.
"""

import argparse
import json
import os
import sys

import requests

ROLES = ("admin", "member", "reader", "service")


class Cloud:
    def __init__(self, keystone, neutron, password):
        self.keystone = keystone
        self.neutron = neutron
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
        return r.json() if r.content else None

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


def identity(cloud, args):
    roles = {name: cloud.role(name) for name in ROLES}
    service = cloud.project("service")
    for name in ("neutron", "praas"):
        user = cloud.user(name, service)
        cloud.grant(user, service, roles["admin"])
        cloud.grant(user, service, roles["service"])
    register(cloud, "network", "neutron", args.neutron)
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


def register(cloud, service_type, name, url):
    """The service of `service_type` in the catalog, with a public, internal and admin endpoint
    at `url` in RegionOne (those missing are added)."""
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
    have = {e["interface"] for e in endpoints}
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
                        "region_id": "RegionOne",
                    }
                },
            )


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
        resources["projects"][p] = entry

    clouds = {"clouds": {}}

    def cloud_entry(user, project):
        return {
            "auth": {
                "auth_url": args.keystone.rsplit("/v3", 1)[0],
                "username": user,
                "password": cloud.password,
                "project_name": project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": "RegionOne",
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
    # JSON is YAML: no YAML library needed here.
    with open(os.path.join(args.state, "clouds.yaml"), "w") as f:
        json.dump(clouds, f, indent=2)
    with open(os.path.join(args.state, "resources.json"), "w") as f:
        json.dump(resources, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("identity", "network"))
    parser.add_argument("--state", required=True)
    parser.add_argument("--keystone", required=True)
    parser.add_argument("--neutron", required=True)
    parser.add_argument("--praas", default="http://127.0.0.1:3300")
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    cloud = Cloud(args.keystone, args.neutron, args.password)
    {"identity": identity, "network": network}[args.step](cloud, args)


if __name__ == "__main__":
    main()
