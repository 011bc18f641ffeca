//! The export document (SPEC section 3): one [`WalletJson`] line per member with a wallet, in
//! member id order, the `show --json` shape. One owner, so `migrate-tool export` and a
//! service's `GET /v1/export` stream the same lines for the same snapshot.
//!
//! At the head it reads the stored views (each member's rows checked against its member hash,
//! one member in memory at a time); as of an earlier moment it folds each member's own stream.

use ledger::domain::{member_of_stream, WALLET_STREAM_PREFIX};
use ledger::{log, Snapshot};

use crate::fold::{self, AsOf};
use crate::shown::WalletJson;
use crate::views;
use crate::ProjectionError;

/// Calls `each` with every member's wallet as of `as_of`, in member id order (members with no
/// wallet at that moment are skipped). At the head, views that are not at the log head or in
/// another layout are refused ([`views::require_current`]): they would show a state the log
/// does not have. The first error of `each` stops the export and is returned as it is.
pub fn export_each<E: From<ProjectionError>>(
    snap: &dyn Snapshot,
    as_of: AsOf,
    each: &mut dyn FnMut(&WalletJson) -> Result<(), E>,
) -> Result<(), E> {
    match as_of {
        AsOf::Head => {
            views::require_current(snap)?;
            // `for_each_shown` stops on a `ProjectionError`; the caller's own error waits here
            // and is what the export returns.
            let mut failed: Option<E> = None;
            let walked = views::for_each_shown(snap, &mut |shown| {
                each(&WalletJson::of_shown(&shown)).map_err(|e| {
                    failed = Some(e);
                    ProjectionError::Fold {
                        reason: "the export's consumer failed".into(),
                    }
                })
            });
            match (walked, failed) {
                (_, Some(e)) => Err(e),
                (Err(e), None) => Err(e.into()),
                (Ok(()), None) => Ok(()),
            }
        }
        other => {
            for stream in log::streams(snap, WALLET_STREAM_PREFIX) {
                let stream = stream.map_err(ProjectionError::from)?;
                let Some((_, member)) = member_of_stream(&stream) else {
                    return Err(ProjectionError::Fold {
                        reason: format!(
                            "stream {stream} is not a wallet stream of a valid member id"
                        ),
                    }
                    .into());
                };
                if let Some(state) = fold::fold_member(snap, &member, other)? {
                    each(&WalletJson::of(&state))?;
                }
            }
            Ok(())
        }
    }
}
