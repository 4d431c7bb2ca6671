-- The media repository. Files live on disk under <data_dir>/media, named by the
-- SHA-256 of their bytes, so identical uploads are stored once; these rows map
-- mxc://server/media_id to a file.
create table media (
    server_name      text not null,
    media_id         text not null,
    user_id          text,                    -- the uploader (local media)
    content_type     text,
    upload_name      text,
    size             bigint,                  -- null until the bytes arrive (async upload)
    sha256           text,                    -- null until the bytes arrive
    created_ts       bigint not null,
    -- async uploads (/create): the time after which an unfilled id lapses
    unused_expires_ts bigint,
    quarantined      boolean not null default false,
    last_access_ts   bigint,
    primary key (server_name, media_id)
);
create index media_user on media (user_id, created_ts);
create index media_sha256 on media (sha256);

-- Thumbnails generated on first request, cached; also content-addressed files.
create table media_thumbnails (
    server_name      text not null,
    media_id         text not null,
    width            integer not null,
    height           integer not null,
    method           text not null,           -- crop, scale
    animated         boolean not null,
    content_type     text not null,
    size             bigint not null,
    sha256           text not null,
    primary key (server_name, media_id, width, height, method, animated),
    foreign key (server_name, media_id) references media (server_name, media_id) on delete cascade
);
create index media_thumbnails_sha256 on media_thumbnails (sha256);

-- URL previews (OpenGraph), cached until expires_ts.
create table url_previews (
    url              text primary key,
    og               text not null,           -- JSON
    expires_ts       bigint not null
);
create index url_previews_expiry on url_previews (expires_ts);
