//! Pure rules, no I/O. Imports ruma, never sqlx.

pub mod appservice;
pub mod auth;
pub mod filter;
pub mod jwt;
pub mod localpart;
pub mod multipart;
pub mod notif_mail;
pub mod password;
pub mod pdu;
pub mod push_rules;
pub mod redaction;
pub mod room_version;
pub mod signing_key;
pub mod sso;
pub mod state_res;
pub mod state_res_v1;
pub mod third_party_invite;
pub mod threepid;
pub mod token;
pub mod xmatrix;
