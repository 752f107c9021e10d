//! Signed links: the company's own backend gives a user a link to their
//! privacy center, signed with a secret it shares with tactful. The
//! signature is HMAC-SHA256 over `"{user_id}\n{expires}"` (expires in Unix
//! seconds), written as lowercase hex; any language's standard library can
//! make one (README, "Privacy center"). The message is unambiguous: the
//! expiry is digits only and comes after the last newline.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a link is refused. The page says the same for every reason, so a
/// caller learns nothing about which part was wrong; the reason is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The signature is not the secret's for this user and expiry.
    Forged,
    /// The expiry has passed.
    Expired,
}

impl Refusal {
    /// Bounded label for the `tactful_privacy_center_refused_total` counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Expired => "expired",
        }
    }
}

fn mac(secret: &[u8], user_id: &str, expires: i64) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(user_id.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The signature of a link for `user_id` valid until `expires` (Unix seconds).
pub fn sign(secret: &[u8], user_id: &str, expires: i64) -> String {
    mac(secret, user_id, expires).finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `signature` is the secret's for `user_id` and `expires`, and the
/// link has not expired at `now_s`. The comparison takes the same time
/// wherever the signatures differ.
pub fn verify(secret: &[u8], user_id: &str, expires: i64, signature: &str, now_s: i64) -> Result<(), Refusal> {
    let Some(bytes) = from_hex(signature) else { return Err(Refusal::Forged) };
    mac(secret, user_id, expires).verify_slice(&bytes).map_err(|_| Refusal::Forged)?;
    if expires <= now_s {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// The 32 bytes of a 64-digit hex signature, or `None`.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok()).collect()
}

/// A signed link: whom it is for, until when, and its signature. The page
/// carries it in every form and link it shows.
#[derive(Clone, Debug)]
pub struct Link {
    /// The user the link is for.
    pub user: String,
    /// Its expiry, Unix seconds.
    pub expires: i64,
    /// Its signature.
    pub sig: String,
}

impl Link {
    /// The link for `user_id` until `expires`, signed with `secret`.
    pub fn signed(secret: &[u8], user_id: &str, expires: i64) -> Self {
        Self { user: user_id.to_owned(), expires, sig: sign(secret, user_id, expires) }
    }

    /// Its query string (`user=…&expires=…&sig=…`, then `extra`), URL-encoded.
    pub fn query(&self, extra: &[(&str, &str)]) -> String {
        let expires = self.expires.to_string();
        let mut pairs = vec![("user", self.user.as_str()), ("expires", expires.as_str()), ("sig", self.sig.as_str())];
        pairs.extend_from_slice(extra);
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-shared-secret-of-at-least-32-chars";

    /// Golden signatures made with Python's `hmac` and `hashlib` (another
    /// implementation than the one signing here):
    /// `hmac.new(secret, f"{user}\n{expires}".encode(), hashlib.sha256).hexdigest()`.
    #[test]
    fn signatures_match_pythons_hmac() {
        assert_eq!(
            sign(SECRET, "u-00042", 1_900_000_000),
            "6a96afac6b78751de15b02714ac572f717903c6468b62b9168c1ad34b2b03efa"
        );
        assert_eq!(
            sign(SECRET, "jöran@example.nl", 1_767_225_600),
            "77d3c4c5269f176e723587435811a533ccd2a8a82530951c4933685535d983fe"
        );
    }

    #[test]
    fn a_link_is_accepted_only_for_its_user_its_expiry_and_before_it_expires() {
        let signature = sign(SECRET, "u-00042", 2_000);
        assert_eq!(verify(SECRET, "u-00042", 2_000, &signature, 1_999), Ok(()));
        assert_eq!(verify(SECRET, "u-00042", 2_000, &signature.to_uppercase(), 1_999), Ok(()));
        assert_eq!(verify(SECRET, "u-00042", 2_000, &signature, 2_000), Err(Refusal::Expired));
        assert_eq!(verify(SECRET, "u-00043", 2_000, &signature, 1_999), Err(Refusal::Forged));
        assert_eq!(verify(SECRET, "u-00042", 2_001, &signature, 1_999), Err(Refusal::Forged));
        assert_eq!(
            verify(b"another-secret-of-at-least-32-chars!", "u-00042", 2_000, &signature, 1),
            Err(Refusal::Forged)
        );
        assert_eq!(verify(SECRET, "u-00042", 2_000, "", 1), Err(Refusal::Forged));
        assert_eq!(verify(SECRET, "u-00042", 2_000, &"é".repeat(32), 1), Err(Refusal::Forged));
        assert_eq!(verify(SECRET, "u-00042", 2_000, &signature[..62], 1), Err(Refusal::Forged));
    }

    #[test]
    fn the_query_encodes_the_user_id() {
        let query = Link::signed(SECRET, "jöran@example.nl", 1_767_225_600).query(&[]);
        assert_eq!(
            query,
            "user=j%C3%B6ran%40example.nl&expires=1767225600&sig=77d3c4c5269f176e723587435811a533ccd2a8a82530951c4933685535d983fe"
        );
    }
}
