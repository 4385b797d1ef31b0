//! The daemon as the API's [`ApiContext`]: what each request reads or changes.

use super::Daemon;
use crate::api::handlers::{ApiContext, ConfigEdit};
use crate::api::proto::{
    AnnounceInfo, BackendListEntry, DbClusterInfo, DbEventInfo, InterfaceInfo, MaglevInfo,
    StatsSnapshot, StatusInfo, VipAnnounceInfo,
};
use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::model::Health;
use std::path::PathBuf;

impl<D: Dataplane> Daemon<D> {
    fn announce_info(&self) -> Option<AnnounceInfo> {
        let cfg = self.controller().config().announce.clone()?;
        let s = self
            .announce
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let announced = s.announced.unwrap_or_default();
        Some(AnnounceInfo {
            bird_socket: cfg.bird_socket,
            include_file: cfg.include_file,
            device: cfg.device,
            device_up: s.device_up,
            last_error: s.last_error,
            vips: s
                .decisions
                .iter()
                .map(|d| VipAnnounceInfo {
                    vip: d.vip,
                    wanted: d.announce,
                    announced: announced.contains(&d.vip),
                    reason: d.reason.clone(),
                })
                .collect(),
        })
    }
}

impl<D: Dataplane> ApiContext for Daemon<D> {
    fn status(&self) -> StatusInfo {
        // Every lock is taken and released in its own statement: a guard in a field of the
        // struct literal below would live to its end and deadlock the next one.
        let configured_digest = match self.configured_digest() {
            Ok(d) => crate::digest::format(d),
            Err(e) => format!("error: {e}"),
        };
        let announce = self.announce_info();
        let ctl = self.controller();
        let backends = ctl.services().iter().flat_map(|s| s.backends.iter());
        let services = ctl.services().len();
        let backend_count = backends.clone().count();
        let healthy_backends = backends.filter(|b| b.health() == Health::Up).count();
        let seed = ctl.config().maglev.seed;
        let expected_digest = ctl.config().maglev.expected_digest.clone();
        let live_inputs = crate::digest::live_inputs(ctl.config(), ctl.services());
        // Building every table is the slow part: done after the controller is released, so
        // a status call does not stall health updates and the announcer.
        drop(ctl);
        let live_digest = match live_inputs.digest() {
            Ok(d) => crate::digest::format(d),
            Err(e) => format!("error: {e}"),
        };
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config_path: self.config_path.clone(),
            interfaces: self.interfaces.iter().map(InterfaceInfo::clone).collect(),
            services,
            backends: backend_count,
            healthy_backends,
            pin_root: self.pin_root.clone(),
            maglev: Some(MaglevInfo {
                seed,
                configured_digest,
                live_digest,
                expected_digest,
            }),
            announce,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        let ctl = self.controller();
        crate::stats::snapshot(&ctl, &self.sampler())
    }

    fn backends(&self) -> Vec<BackendListEntry> {
        let ctl = self.controller();
        let sampler = self.sampler();
        ctl.services()
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| BackendListEntry {
                    service: s.cfg.name.clone(),
                    backend: crate::stats::backend_stats(b, &s.cfg.health_check, &sampler),
                })
            })
            .collect()
    }

    fn db_status(&self, only: Option<&str>) -> Result<Vec<DbClusterInfo>, String> {
        let ctl = self.controller();
        let db = self.db();
        crate::db::supervisor::status(&ctl, &db, only)
    }

    fn db_events(&self, only: Option<&str>, limit: usize) -> Result<Vec<DbEventInfo>, String> {
        if let Some(name) = only {
            let ctl = self.controller();
            if ctl.config().db_cluster(name).is_none() {
                return Err(crate::db::supervisor::unknown_cluster(ctl.config(), name));
            }
        }
        let db = self.db();
        Ok(db
            .events(only, limit)
            .iter()
            .map(crate::db::supervisor::event_info)
            .collect())
    }

    fn running_config(&self) -> Config {
        self.controller().config().clone()
    }

    fn edit_config(&self, edit: ConfigEdit<'_>) -> Result<String, String> {
        Daemon::edit_config(self, edit)
    }

    fn reload(&self) -> Result<String, String> {
        Daemon::reload(self)
    }

    fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    fn request_unload(&self) {
        self.request_stop(true);
    }
}
