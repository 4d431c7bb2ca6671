//! Thumbnails of the standard sizes, made on first request in a blocking task
//! under decoding limits, and cached as files of their own.

use std::{io::Cursor, path::PathBuf, time::Duration};

use super::{
    download::find,
    store::{file_path, store_bytes},
};
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::media as rows,
};

/// (width, height, method) of the thumbnails served.
const SIZES: [(u32, u32, &str); 5] = [
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
    (800, 600, "scale"),
];

/// The standard size to serve for a request.
fn pick_size(width: u32, height: u32, method: &str) -> (u32, u32, &'static str) {
    let want_crop = method == "crop";
    let candidates: Vec<(u32, u32, &str)> = SIZES
        .iter()
        .copied()
        .filter(|(_, _, m)| (*m == "crop") == want_crop)
        .collect();
    candidates
        .iter()
        .copied()
        .find(|(w, h, _)| *w >= width && *h >= height)
        .unwrap_or_else(|| *candidates.last().expect("sizes"))
}

/// A thumbnail: (content type, file path, size).
pub async fn thumbnail(
    app: &AppState,
    server_name: &str,
    media_id: &str,
    width: u32,
    height: u32,
    method: &str,
    wait: Duration,
) -> Result<(String, PathBuf, u64)> {
    if width == 0 || height == 0 {
        return Err(Error::invalid_param("width and height must be positive"));
    }
    if method != "crop" && method != "scale" {
        return Err(Error::invalid_param("method must be crop or scale"));
    }
    let (media, source) = find(app, server_name, media_id, wait).await?;
    let (w, h, method) = pick_size(width, height, method);
    if let Some(t) = rows::thumbnail(
        &app.db,
        server_name,
        media_id,
        w as i32,
        h as i32,
        method,
        false,
    )
    .await?
    {
        return Ok((t.content_type, file_path(app, &t.sha256), t.size as u64));
    }
    let content_type = media.content_type.clone().unwrap_or_default();
    if !content_type.starts_with("image/") || content_type.starts_with("image/svg") {
        return Err(Error::not_found("No thumbnail for this media"));
    }
    let max_pixels = app.config.media.max_image_pixels;
    // Held while the source is in memory and being decoded.
    let _permit = app
        .thumbnailing
        .acquire()
        .await
        .map_err(|e| anyhow::anyhow!("thumbnail semaphore closed: {e}"))?;
    let bytes = tokio::fs::read(&source)
        .await
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", source.display()))?;
    let method_owned = method.to_owned();
    let made = tokio::task::spawn_blocking(move || {
        make_thumbnail(&bytes, w, h, &method_owned, max_pixels)
    })
    .await
    .map_err(|e| anyhow::anyhow!("thumbnail task: {e}"))?;
    let (out, out_type) = match made {
        Ok(made) => made,
        Err(reason) => {
            tracing::info!(media_id, "no thumbnail: {reason}");
            return Err(Error::not_found("No thumbnail for this media"));
        }
    };
    let sha = store_bytes(app, &out).await?;
    rows::insert_thumbnail(
        &app.db,
        server_name,
        media_id,
        &rows::Thumbnail {
            width: w as i32,
            height: h as i32,
            method: method.to_owned(),
            animated: false,
            content_type: out_type.to_owned(),
            size: out.len() as i64,
            sha256: sha.clone(),
        },
    )
    .await?;
    Ok((out_type.to_owned(), file_path(app, &sha), out.len() as u64))
}

/// The largest width or height decoded for a thumbnail, whatever the pixel count.
pub const MAX_DIMENSION: u32 = 16_384;

/// Decodes (within limits) and resizes; returns the encoded thumbnail and its type.
pub fn make_thumbnail(
    bytes: &[u8],
    width: u32,
    height: u32,
    method: &str,
    max_pixels: u64,
) -> std::result::Result<(Vec<u8>, &'static str), String> {
    use image::{ImageFormat, ImageReader};

    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("unknown image format")?;
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| e.to_string())?;
    if w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(format!("{w}x{h} is wider or taller than {MAX_DIMENSION}"));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("{w}x{h} is more than {max_pixels} pixels"));
    }
    // The limits bind the decoder itself: what the header declares is checked
    // again there, and every buffer it allocates counts against `max_alloc`. The
    // decoded frame may take 4 bytes per allowed pixel (8-bit RGBA); deeper
    // images of the largest sizes are refused rather than decoded.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let thumb = if method == "crop" {
        crop_to(&image, width, height)
    } else if w <= width && h <= height {
        image
    } else {
        // Integer area sampling straight into the thumbnail: no intermediate of
        // the source's size (a filtered resize keeps one in f32, 16 bytes a pixel).
        image.thumbnail(width, height)
    };
    let (out_format, out_type) = if format == ImageFormat::Jpeg {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let thumb = if out_format == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(thumb.to_rgb8())
    } else {
        thumb
    };
    let mut out = Cursor::new(Vec::new());
    thumb
        .write_to(&mut out, out_format)
        .map_err(|e| e.to_string())?;
    Ok((out.into_inner(), out_type))
}

/// Scales to cover `width`×`height` and cuts out the middle. Shrinking samples
/// straight into the scaled size; enlarging (a small source) filters.
fn crop_to(image: &image::DynamicImage, width: u32, height: u32) -> image::DynamicImage {
    let (w, h) = (image.width().max(1), image.height().max(1));
    let ratio = f64::max(
        f64::from(width) / f64::from(w),
        f64::from(height) / f64::from(h),
    );
    let sw = ((f64::from(w) * ratio).round() as u32).max(width);
    let sh = ((f64::from(h) * ratio).round() as u32).max(height);
    let scaled = if ratio < 1.0 {
        image.thumbnail_exact(sw, sh)
    } else {
        image.resize_exact(sw, sh, image::imageops::FilterType::Triangle)
    };
    scaled.crop_imm((sw - width) / 2, (sh - height) / 2, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn standard_sizes_are_picked_upwards() {
        assert_eq!(pick_size(30, 30, "crop"), (32, 32, "crop"));
        assert_eq!(pick_size(50, 50, "crop"), (96, 96, "crop"));
        assert_eq!(pick_size(500, 500, "crop"), (96, 96, "crop"));
        assert_eq!(pick_size(300, 200, "scale"), (320, 240, "scale"));
        assert_eq!(pick_size(5000, 5000, "scale"), (800, 600, "scale"));
    }

    #[test]
    fn crop_and_scale_dimensions() {
        let source = png(1000, 500);
        let (out, kind) = make_thumbnail(&source, 96, 96, "crop", 1 << 30).unwrap();
        assert_eq!(kind, "image/png");
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (96, 96));
        let (out, _) = make_thumbnail(&source, 320, 240, "scale", 1 << 30).unwrap();
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (320, 160));
    }

    #[test]
    fn oversized_images_are_not_decoded() {
        let source = png(3000, 3000);
        let err = make_thumbnail(&source, 96, 96, "crop", 1_000_000).unwrap_err();
        assert!(err.contains("pixels"), "{err}");
    }

    #[test]
    fn the_decoder_is_held_to_the_memory_budget() {
        // 1000x1000 is within a 1 M pixel limit, but 16-bit RGBA needs 8 MB to
        // decode, twice the 4 bytes a pixel allowed: refused, not decoded.
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
            1000,
            1000,
            image::Rgba([1, 2, 3, 4]),
        );
        let mut deep = Cursor::new(Vec::new());
        img.write_to(&mut deep, image::ImageFormat::Png).unwrap();
        let err = make_thumbnail(deep.get_ref(), 96, 96, "crop", 1_000_000).unwrap_err();
        assert!(err.to_lowercase().contains("limit"), "{err}");
        // The same picture in 8-bit RGB fits.
        assert!(make_thumbnail(&png(1000, 1000), 96, 96, "crop", 1_000_000).is_ok());
    }

    #[test]
    fn overlong_sides_are_not_decoded() {
        // Few pixels, but a side past MAX_DIMENSION.
        let source = png(MAX_DIMENSION + 1, 1);
        let err = make_thumbnail(&source, 96, 96, "scale", 1 << 30).unwrap_err();
        assert!(err.contains("wider or taller"), "{err}");
    }

    #[test]
    fn crop_covers_then_cuts() {
        for (w, h) in [(1000, 500), (500, 1000), (40, 10), (96, 96), (97, 3000)] {
            let (out, _) = make_thumbnail(&png(w, h), 96, 96, "crop", 1 << 30).unwrap();
            let img = image::load_from_memory(&out).unwrap();
            assert_eq!((img.width(), img.height()), (96, 96), "{w}x{h}");
        }
    }
}
