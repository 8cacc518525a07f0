//! hyper's reason-phrase extension to and from the core's [`Reason`], so an unusual status
//! code's phrase reaches the client as the origin wrote it, on a miss and from the cache.

use http::response;
use hyper::ext::ReasonPhrase;
use larder_core::heads::Reason;

/// An upstream head as the engine keeps it (hyper sets the extension only when the phrase
/// is not the code's canonical one).
pub fn into_core(head: &mut response::Parts) {
    if let Some(phrase) = head.extensions.remove::<ReasonPhrase>() {
        if let Some(reason) = Reason::new(phrase.into()) {
            head.extensions.insert(reason);
        }
    }
}

/// A head from the engine as hyper writes it.
pub fn from_core(head: &mut response::Parts) {
    if let Some(reason) = head.extensions.remove::<Reason>() {
        if let Ok(phrase) = ReasonPhrase::try_from(reason.bytes()) {
            head.extensions.insert(phrase);
        }
    }
}
