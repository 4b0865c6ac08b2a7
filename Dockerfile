FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
ENTRYPOINT ["portcullis"]
