-- wrk script: POST /api/tasks with a JWT (BENCH_TOKEN) and a small echo payload.
wrk.method = "POST"
wrk.body = '{"type": "echo", "payload": {"message": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
