//! What a failed TLS connection to the leader means, in words a user can act on.
//! Clients (the `kiln` commands) and members (their gRPC channel) both read their
//! errors through [`explain`], so a missing CA, a wrong name or a plain-HTTP peer
//! reads the same everywhere.

use rustls::{CertificateError, Error};

/// The explanation of the first TLS error in `error`'s chain, if there is one.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = tls_error(error) {
            return Some(describe(tls));
        }
        next = error.source();
    }
    None
}

/// The TLS error `error` is or wraps. An `io::Error`'s `source()` skips the error
/// it wraps (and clients wrap io errors in io errors), so those are opened here.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    if let Some(tls) = error.downcast_ref::<Error>() {
        return Some(tls);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(inner);
    while let Some(error) = next {
        if let Some(tls) = tls_error(error) {
            return Some(tls);
        }
        next = error.source();
    }
    None
}

fn describe(error: &Error) -> String {
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the leader's TLS certificate is not signed by a CA this side trusts ({error}): give the CA that signed it with --tls-ca (KILN_TLS_CA)"
        ),
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
            "the leader's TLS certificate does not hold the host name of the leader URL ({error}): use a URL with a name the certificate holds"
        ),
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            format!("the leader's TLS certificate has expired ({error}): renew it")
        }
        Error::InvalidCertificate(_) => format!("the leader's TLS certificate is refused: {error}"),
        Error::InvalidMessage(_) => format!(
            "the leader does not speak TLS at this address ({error}): use an http:// URL, or start the leader with --tls-cert and --tls-key"
        ),
        _ => format!("TLS with the leader failed: {error}"),
    }
}

/// Every message of `error`'s chain, joined: what a log line shows of a failure
/// whose outer message ("transport error") says little.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// What to show of a failed connection: the TLS explanation, or the chain.
pub fn describe_failure(error: &(dyn std::error::Error + 'static)) -> String {
    explain(error).unwrap_or_else(|| chain(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_error_is_found_under_io_errors_and_explained() {
        let tls = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let text = explain(&io).expect("found inside the io::Error");
        assert!(text.contains("--tls-ca") && text.contains("not signed by a CA"), "{text}");
        let plain = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(explain(&plain).unwrap().contains("does not speak TLS"));
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        assert!(explain(&nested).is_some_and(|t| t.contains("--tls-ca")), "an io error in an io error");
        let other = std::io::Error::other("refused");
        assert_eq!(explain(&other), None);
        assert_eq!(describe_failure(&other), "refused");
    }
}
