//! The error every command can return, and the exit code each kind maps to.

use crate::exit::ExitCode;
use crate::flow::{FlowError, ParamError};
use crate::journal::JournalError;
use crate::projection::ProjectionError;
use crate::session::{OpenError, SessionError};
use crate::store::{LoadError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Flow(_) | Error::Param(_) | Error::Usage(_) | Error::Secrets(_) => ExitCode::Usage,
            Error::Store(e) => store_code(e),
            Error::Load(e) => load_code(e),
            Error::Open(e) => match e {
                OpenError::Store(e) => store_code(e),
                OpenError::Load(e) => load_code(e),
                OpenError::Journal(e) => journal_code(e),
                OpenError::FlowEdited { .. }
                | OpenError::StepsChanged { .. }
                | OpenError::FlowInvalid { .. }
                | OpenError::Frames { .. }
                | OpenError::Approval { .. }
                | OpenError::ProfileGone { .. }
                | OpenError::Secrets { .. } => ExitCode::Usage,
                OpenError::Session(e) => session_code(e),
            },
            Error::Session(e) => session_code(e),
            Error::Projection(e) => match e {
                ProjectionError::Load(e) => load_code(e),
                ProjectionError::Store(e) => store_code(e),
                ProjectionError::Sqlite { .. } | ProjectionError::Io { .. } => ExitCode::Io,
                ProjectionError::Busy { .. } => ExitCode::Locked,
                ProjectionError::Schedule(crate::schedule::log::LogError::Corrupt { .. }) => ExitCode::Usage,
                ProjectionError::Schedule(crate::schedule::log::LogError::Io { .. }) => ExitCode::Io,
            },
            Error::Io { .. } => ExitCode::Io,
        }
    }

    /// Whether this is stdout closing under us (`runner logs | head`): not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn store_code(e: &StoreError) -> ExitCode {
    match e {
        StoreError::BadRunId(_)
        | StoreError::NotFound { .. }
        | StoreError::NotARun { .. }
        | StoreError::NoRuns { .. }
        | StoreError::Ambiguous { .. } => ExitCode::Usage,
        StoreError::Locked { .. } => ExitCode::Locked,
        StoreError::Io { .. } => ExitCode::Io,
        StoreError::Journal(e) => journal_code(e),
    }
}

fn journal_code(e: &JournalError) -> ExitCode {
    match e {
        JournalError::Corrupt { .. } => ExitCode::Usage,
        JournalError::Io { .. } | JournalError::WriterFailed { .. } => ExitCode::Io,
    }
}

fn load_code(e: &LoadError) -> ExitCode {
    match e {
        LoadError::Journal(e) => journal_code(e),
        LoadError::Fold { .. } | LoadError::WrongDirectory { .. } => ExitCode::Usage,
    }
}

fn session_code(e: &SessionError) -> ExitCode {
    match e {
        SessionError::Journal(e) | SessionError::Commit { source: e, .. } => journal_code(e),
        SessionError::Internal(_) | SessionError::Setup(_) => ExitCode::Internal,
        SessionError::LeftoversSurvived { .. } => ExitCode::Locked,
    }
}

/// Wraps an I/O error on stdout or a file with its path.
pub fn io_at(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
