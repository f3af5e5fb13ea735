//! Identifiers carried on the wire.
//!
//! Each is a `u32` newtype so that a user id can never be passed where a
//! service id is expected. All are in host order in memory and big-endian on
//! the wire (see [`crate::wire`]).

use core::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The raw value.
            #[inline]
            pub const fn get(self) -> u32 {
                self.0
            }
        }

        impl From<u32> for $name {
            #[inline]
            fn from(v: u32) -> Self {
                Self(v)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_newtype!(
    /// The source user of a frame: who is asking.
    UserId,
    "u"
);
id_newtype!(
    /// The destination service of a frame: what is being reached.
    ServiceId,
    "s"
);
id_newtype!(
    /// A group of users named in the policy.
    GroupId,
    "g"
);
id_newtype!(
    /// Chosen by a receiver for one session; the sender puts it in every
    /// frame so the receiver finds the session (and key) with one index
    /// operation, before any crypto.
    ReceiverIndex,
    "r"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        assert_eq!(UserId(7).to_string(), "u7");
        assert_eq!(ServiceId(9).to_string(), "s9");
        assert_eq!(format!("{:?}", ReceiverIndex(3)), "r3");
    }
}
