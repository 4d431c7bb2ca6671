-- The server notices room of each user who has received a notice (admin API
-- send_server_notice). A user who left it gets a new one with the next notice.
create table server_notice_rooms (
    user_id     text primary key,
    room_id     text not null
);
