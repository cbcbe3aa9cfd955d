# Dockerfile: capgate and capgate-mock on Debian 12, built in one stage and run in another that
# holds only the runtime libraries, as a non-root user. docker-compose.yml runs them with Redis.
#   docker build -t capgate .
#   docker run --rm -p 8080:8080 -v /path/capgate.json:/etc/capgate/capgate.json:ro capgate
FROM debian:12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
      libevent-dev libssl-dev libhiredis-dev libjansson-dev libcmocka-dev libjemalloc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Only the two programs: the tests run in CI, not in the image build.
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
 && cmake --build /build -j"$(nproc)" --target capgate capgate-mock \
 && DESTDIR=/stage cmake --install /build

FROM debian:12-slim
# The runtime libraries the .deb depends on (dpkg-shlibdeps; libstdc++6 is jemalloc's), and the
# CA store for the upstream's TLS certificate.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libhiredis0.14 \
      libjansson4 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 \
      libevent-pthreads-2.1-7 libjemalloc2 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/capgate \
      --shell /usr/sbin/nologin capgate \
 && install -d -o capgate -g capgate -m 0750 /var/lib/capgate /var/lib/capgate/spool \
      /var/log/capgate
COPY --from=build /stage/usr/bin/capgate /stage/usr/bin/capgate-mock /usr/bin/
COPY --from=build /stage/usr/share/man/ /usr/share/man/
COPY --from=build /stage/etc/capgate/capgate.json /etc/capgate/capgate.json
USER capgate:capgate
WORKDIR /var/lib/capgate
EXPOSE 8080 8081
ENTRYPOINT ["/usr/bin/capgate"]
CMD ["--config", "/etc/capgate/capgate.json"]
