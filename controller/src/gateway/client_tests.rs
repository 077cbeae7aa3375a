//! Unit tests of the client's pure helpers.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[test]
fn retry_after_values() {
    // Sun, 06 Nov 1994 08:49:37 GMT
    let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let cases = [
        ("120", Some(Duration::from_secs(120))),
        (" 0 ", Some(Duration::ZERO)),
        (
            "Sun, 06 Nov 1994 08:49:37 GMT",
            Some(Duration::from_secs(0)),
        ),
        (
            "Sun, 06 Nov 1994 08:50:07 GMT",
            Some(Duration::from_secs(30)),
        ),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
    ];
    for (value, expected) in cases {
        assert_eq!(parse_retry_after(value, date), expected, "{value:?}");
    }
    let later = date + Duration::from_secs(60);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
        Some(Duration::ZERO)
    );
}

#[test]
fn wire_codes() {
    use protocol::ModelErrorCode as Code;
    let cases = [
        (
            ProviderError::RateLimited { retry_after: None },
            Code::RateLimited,
        ),
        (ProviderError::Timeout, Code::Timeout),
        (
            ProviderError::Client {
                status: 400,
                message: String::new(),
            },
            Code::InvalidRequest,
        ),
        (
            ProviderError::Client {
                status: 413,
                message: String::new(),
            },
            Code::InvalidRequest,
        ),
        (
            ProviderError::Client {
                status: 401,
                message: String::new(),
            },
            Code::ProviderError,
        ),
        (ProviderError::Server { status: 503 }, Code::ProviderError),
        (
            ProviderError::Unreachable {
                detail: String::new(),
            },
            Code::ProviderError,
        ),
        (
            ProviderError::Malformed {
                detail: String::new(),
            },
            Code::ProviderError,
        ),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code, "{error}");
    }
    assert_eq!(
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        }
        .to_string(),
        "provider rate limited the request (http 429), retry after 3s"
    );
}
