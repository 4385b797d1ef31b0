//! Database role probes: what one check round learns about one member of a database cluster
//! ([`MemberProbe`]), and the probe kinds ([`RoleCheck`]: `postgres`, `patroni`, `both`).
//!
//! A role probe answers "which role does this member have and how far is its WAL", not "is it
//! up": the database decision layer runs [`RoleCheck::probe`] for every member of a cluster once
//! per round and decides from the whole round. Each kind lives in its own module
//! ([`super::postgres`], [`super::patroni`]); adding one is a module plus a variant here.

use super::patroni::{self, PatroniCheck};
use super::postgres::{self, PostgresCheck};
use std::net::SocketAddr;

/// The outcome of one role probe of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberProbe {
    /// The query ran (or Patroni answered with a role).
    Observed(MemberObservation),
    /// Refused / timeout / connection reset / unexpected answer: a failed check (counts toward
    /// `fall`).
    Failed(String),
    /// Bad password or another problem with the check's own credentials or permissions (no
    /// `pg_hba.conf` entry, unknown database, missing `pg_monitor`): alert, role unchanged,
    /// not a failure.
    AuthFailed(String),
    /// Too many connections (SQLSTATE class 53, e.g. 53300): the server is alive, role
    /// unchanged.
    Overloaded(String),
    /// Starting up, shutting down, in crash recovery (SQLSTATE class 57, e.g. 57P03
    /// `cannot_connect_now`, 57P01 `admin_shutdown`), or for `both`: PostgreSQL and Patroni
    /// disagree about the role. Not usable in any role.
    NotUsable(String),
    /// Could not run because of a shortage on this host (EMFILE, ENOBUFS, ...) or an
    /// unreadable password file: neither success nor failure.
    NotRun(String),
}

impl MemberProbe {
    /// Short name of the variant, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Observed(_) => "observed",
            Self::Failed(_) => "failed",
            Self::AuthFailed(_) => "auth_failed",
            Self::Overloaded(_) => "overloaded",
            Self::NotUsable(_) => "not_usable",
            Self::NotRun(_) => "not_run",
        }
    }

    /// Why the probe did not observe (`None` for [`MemberProbe::Observed`]).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Observed(_) => None,
            Self::Failed(r)
            | Self::AuthFailed(r)
            | Self::Overloaded(r)
            | Self::NotUsable(r)
            | Self::NotRun(r) => Some(r),
        }
    }
}

/// What one successful probe saw on a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberObservation {
    /// `pg_is_in_recovery()`: true on a replica (standby).
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()`, primary only.
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()` (replica; may be set on a primary after a promotion).
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()` (replica; may be set on a primary after crash recovery).
    pub replay_lsn: Option<u64>,
    /// Primary: the timeline of the current WAL file; replica: the WAL receiver's
    /// `received_tli` (None while no receiver runs).
    pub timeline: Option<u32>,
    /// `pg_control_system().system_identifier` (0 when only Patroni was asked and its answer
    /// did not carry `database_system_identifier`).
    pub system_identifier: u64,
    /// Replica: the WAL receiver's upstream `sender_host`, `sender_port` (pg_stat_wal_receiver).
    pub upstream: Option<(String, u16)>,
    /// Replica: the WAL receiver's status is `streaming`.
    pub streaming: bool,
    /// Patroni's answer when the check includes it: Some(true) = `/primary` 200,
    /// Some(false) = `/replica` 200.
    pub patroni_primary: Option<bool>,
}

/// How the members of a database cluster are probed (`check.type` of a `db_clusters` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleCheck {
    /// `postgres`: the role query over the PostgreSQL protocol.
    Postgres(PostgresCheck),
    /// `patroni`: `GET /primary` and `GET /replica` on the member's Patroni REST address.
    Patroni(PatroniCheck),
    /// `both`: the two above, combined by [`combine_both`] (AND).
    Both(PostgresCheck, PatroniCheck),
}

impl RoleCheck {
    /// Probes one member: `member` is its PostgreSQL address, `patroni` its Patroni REST
    /// address (required by `patroni` and `both`; config validation ensures it, and a missing
    /// one here is reported as [`MemberProbe::NotRun`]). Never takes longer than the check's
    /// timeout (both halves of `both` run concurrently, each under the timeout).
    pub async fn probe(&self, member: SocketAddr, patroni: Option<SocketAddr>) -> MemberProbe {
        let no_patroni = || MemberProbe::NotRun("no Patroni REST address configured".into());
        match self {
            Self::Postgres(pg) => postgres::probe(pg, member).await,
            Self::Patroni(p) => match patroni {
                Some(addr) => patroni::probe(p, addr).await,
                None => no_patroni(),
            },
            Self::Both(pg, p) => match patroni {
                Some(addr) => {
                    let (a, b) = tokio::join!(postgres::probe(pg, member), patroni::probe(p, addr));
                    combine_both(a, b)
                }
                None => no_patroni(),
            },
        }
    }
}

/// `both` = AND of the PostgreSQL probe and the Patroni probe.
///
/// - PostgreSQL is the source of every field; Patroni contributes `patroni_primary`.
/// - If the PostgreSQL probe did not observe, its outcome stands (a failed, overloaded,
///   starting or auth-failing server is what it is, whatever Patroni says).
/// - If PostgreSQL observed but Patroni did not, Patroni's outcome stands: a dead Patroni
///   (`Failed`) fails the check, as AND requires.
/// - If both observed and they disagree (PostgreSQL says primary but Patroni says it is not the
///   leader, e.g. an old primary Patroni is about to demote, or a primary running without its
///   Patroni; or PostgreSQL says replica while Patroni already answers `/primary` during a
///   promotion), the member is [`MemberProbe::NotUsable`]: it is neither a usable primary
///   nor a usable replica until they agree.
pub fn combine_both(postgres: MemberProbe, patroni: MemberProbe) -> MemberProbe {
    let MemberProbe::Observed(mut pg) = postgres else {
        return postgres;
    };
    let MemberProbe::Observed(p) = patroni else {
        return match patroni {
            MemberProbe::Failed(e) => MemberProbe::Failed(format!("patroni: {e}")),
            MemberProbe::NotUsable(e) => MemberProbe::NotUsable(format!("patroni: {e}")),
            MemberProbe::AuthFailed(e) => MemberProbe::AuthFailed(format!("patroni: {e}")),
            MemberProbe::Overloaded(e) => MemberProbe::Overloaded(format!("patroni: {e}")),
            MemberProbe::NotRun(e) => MemberProbe::NotRun(format!("patroni: {e}")),
            MemberProbe::Observed(_) => unreachable!("handled above"),
        };
    };
    let patroni_primary = p.patroni_primary.unwrap_or(!p.in_recovery);
    if patroni_primary == pg.in_recovery {
        let say = |primary: bool| if primary { "primary" } else { "replica" };
        return MemberProbe::NotUsable(format!(
            "PostgreSQL says {} but Patroni says {}",
            say(!pg.in_recovery),
            say(patroni_primary)
        ));
    }
    pg.patroni_primary = Some(patroni_primary);
    MemberProbe::Observed(pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> MemberObservation {
        MemberObservation {
            in_recovery: false,
            current_lsn: Some(0x3000_0148),
            timeline: Some(1),
            system_identifier: 7_311_234_567_890,
            ..Default::default()
        }
    }

    fn replica() -> MemberObservation {
        MemberObservation {
            in_recovery: true,
            receive_lsn: Some(0x3000_0148),
            replay_lsn: Some(0x3000_0100),
            timeline: Some(1),
            system_identifier: 7_311_234_567_890,
            upstream: Some(("10.2.1.2".into(), 5432)),
            streaming: true,
            ..Default::default()
        }
    }

    fn patroni(primary: bool) -> MemberProbe {
        MemberProbe::Observed(MemberObservation {
            in_recovery: !primary,
            patroni_primary: Some(primary),
            ..Default::default()
        })
    }

    #[test]
    fn both_agreeing_keeps_postgres_fields_and_adds_patroni() {
        let MemberProbe::Observed(o) =
            combine_both(MemberProbe::Observed(primary()), patroni(true))
        else {
            panic!("not observed");
        };
        assert_eq!(
            o,
            MemberObservation {
                patroni_primary: Some(true),
                ..primary()
            }
        );
        let MemberProbe::Observed(o) =
            combine_both(MemberProbe::Observed(replica()), patroni(false))
        else {
            panic!("not observed");
        };
        assert_eq!(o.patroni_primary, Some(false));
        assert_eq!(o.upstream, replica().upstream);
    }

    #[test]
    fn both_disagreeing_is_not_usable() {
        match combine_both(MemberProbe::Observed(primary()), patroni(false)) {
            MemberProbe::NotUsable(why) => {
                assert_eq!(why, "PostgreSQL says primary but Patroni says replica")
            }
            other => panic!("{other:?}"),
        }
        match combine_both(MemberProbe::Observed(replica()), patroni(true)) {
            MemberProbe::NotUsable(why) => {
                assert_eq!(why, "PostgreSQL says replica but Patroni says primary")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_takes_the_first_non_observation() {
        // PostgreSQL's own failure wins, whatever Patroni says.
        for pg in [
            MemberProbe::Failed("connect: refused".into()),
            MemberProbe::AuthFailed("28P01".into()),
            MemberProbe::Overloaded("53300".into()),
            MemberProbe::NotUsable("57P03".into()),
            MemberProbe::NotRun("emfile".into()),
        ] {
            assert_eq!(combine_both(pg.clone(), patroni(true)), pg);
            assert_eq!(
                combine_both(pg.clone(), MemberProbe::Failed("x".into())),
                pg
            );
        }
        // PostgreSQL observed, Patroni down: the AND fails.
        assert_eq!(
            combine_both(
                MemberProbe::Observed(primary()),
                MemberProbe::Failed("connect: Connection refused".into())
            ),
            MemberProbe::Failed("patroni: connect: Connection refused".into())
        );
        assert_eq!(
            combine_both(
                MemberProbe::Observed(replica()),
                MemberProbe::NotUsable("neither /primary nor /replica answered 200".into())
            )
            .kind(),
            "not_usable"
        );
    }

    #[tokio::test]
    async fn patroni_kinds_need_a_patroni_address() {
        let member: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let check = RoleCheck::Patroni(PatroniCheck {
            timeout: std::time::Duration::from_millis(100),
        });
        assert_eq!(check.probe(member, None).await.kind(), "not_run");
    }
}
