//! `praas demo`: the all-in-one with real connections, on a simulated L3-agent network node
//! ([`l3`]) or on a real OVN under the dev cloud's OVN Neutron ([`ovn`]).

mod l3;
mod ovn;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use praas::dataplane::Driver;
use praas::openstack::{clouds, Session};
use serde_json::Value;

/// Runs the demo: the L3-agent node with `driver`, or with `ovn` the OVN one (which needs the
/// dev cloud).
pub fn run(driver: Driver, cloud_dir: Option<&Path>, ovn: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    let cloud = cloud_dir.map(Cloud::load).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if ovn {
        let cloud = cloud.context(
            "the OVN demo runs under the dev cloud's OVN Neutron: give --cloud-dir \
             (scripts/demo --ovn does)",
        )?;
        runtime.block_on(ovn::demo(cloud))
    } else {
        runtime.block_on(l3::demo(driver, cloud))
    }
}

/// The dev cloud, as `scripts/dev-cloud` wrote it down.
struct Cloud {
    dir: PathBuf,
    resources: Value,
}

impl Cloud {
    fn load(dir: &Path) -> Result<Cloud> {
        let path = dir.join("resources.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run scripts/dev-cloud up)", path.display()))?;
        Ok(Cloud {
            dir: dir.to_path_buf(),
            resources: serde_json::from_str(&text)?,
        })
    }

    /// `projects.a.<key>` of the ML2 Neutron.
    fn a(&self, key: &str) -> Result<String> {
        self.resources["projects"]["a"][key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("resources.json has no projects.a.{key}"))
    }

    fn session(&self, cloud: &str) -> Result<Arc<Session>> {
        let config = clouds::load(&self.dir.join("clouds.yaml"), cloud)?;
        Ok(Arc::new(Session::new(config, Duration::from_secs(10))?))
    }
}

/// Calls the demo's API as one user.
struct Client {
    http: reqwest::Client,
    base: String,
    /// A Keystone token, or `None` under noauth.
    token: Option<String>,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        target: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{target}", self.base));
        req = match &self.token {
            Some(t) => req.header("X-Auth-Token", t),
            None => req
                .header("X-Project-Id", "demo")
                .header("X-Roles", "member,reader"),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn curl_auth(&self) -> &'static str {
        if self.token.is_some() {
            " -H \"X-Auth-Token: $TOKEN\""
        } else {
            ""
        }
    }

    async fn wait_active(&self, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = self
                .call(reqwest::Method::GET, &format!("/v1/mappings/{id}"), None)
                .await?;
            match v["mapping"]["status"].as_str() {
                Some("ACTIVE") => return Ok(()),
                Some("ERROR") => bail!("mapping failed: {}", v["mapping"]["status_reason"]),
                _ if Instant::now() > deadline => bail!("mapping not active after 10 s: {v}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
