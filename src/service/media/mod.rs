//! The media repository (spec: "Content repository"): uploads (direct and
//! async via `/create`), downloads, thumbnails.
//!
//! Bytes are streamed to a temporary file while their SHA-256 is computed, then
//! renamed to `<data_dir>/media/<ab>/<cd>/<sha256>`; identical uploads share one
//! file. Rows in `media` map each `mxc://` id to its file; a file is deleted when
//! no row uses it any more. Remote media takes the same way in: its federation
//! answer is parsed as it arrives and the media written out under the upload
//! limit and a deadline (see `find_remote`).
//!
//! Thumbnails use the standard sizes Synapse serves (32×32 and 96×96 cropped,
//! 320×240, 640×480 and 800×600 scaled), picked as the smallest at least as big
//! as asked, generated on first request in a blocking task and cached as files
//! of their own. An image is only decoded if its header declares at most
//! `media.max_image_pixels` and at most [`MAX_DIMENSION`] a side, and decoding
//! runs under the `image` crate's allocation limit (4 bytes per allowed pixel),
//! so a decompression bomb costs a header read. Downscaling samples straight
//! into the thumbnail (no full-size intermediate), and at most one thumbnail
//! per core is made at once (`AppState::thumbnailing`), so the memory thumbnails
//! can take is bounded whatever the requests.
//!
//! One module per concern: [`store`] (the files: content-addressed, written
//! through a temporary file), [`upload`] (`/upload`, `/create` and the
//! asynchronous `PUT /upload`), [`download`] (finding an item to serve, local
//! or remote, and how it is served), [`federation`] (remote media fetched over
//! federation; the frame local media is served to other servers in),
//! [`thumbnail`], [`moderation`] (quarantine, a user's uploads purged) and
//! [`expiry`] (the background clean-up).

mod download;
mod expiry;
mod federation;
mod moderation;
mod store;
mod thumbnail;
mod upload;

pub use download::{find, is_inline};
pub use expiry::collect_garbage;
pub use federation::{RemoteFetches, federation_frame};
pub use moderation::{purge_user, quarantine, quarantine_room};
pub use store::{delete_unused_files, file_path};
pub use thumbnail::{MAX_DIMENSION, make_thumbnail, thumbnail};
pub use upload::{Stored, create, mxc, store_new, upload, upload_to};
