// Run once by the one-shot service mongo-init of deploy/compose.ha.yaml (mongosh, signed in to
// mongo1 as the root account): make the three nodes one replica set, then wait for a primary.
// Running it again on an initiated set changes nothing.
const members = [
  { _id: 0, host: "mongo1:27017" },
  { _id: 1, host: "mongo2:27017" },
  { _id: 2, host: "mongo3:27017" },
];

try {
  rs.status();
  print("replica set rs0 already initiated");
} catch (error) {
  if (error.codeName !== "NotYetInitialized") {
    throw error;
  }
  rs.initiate({ _id: "rs0", members: members });
  print("replica set rs0 initiated");
}

for (let waited = 0; !db.hello().primary; waited += 1) {
  if (waited >= 120) {
    throw new Error("no primary after 120 s");
  }
  sleep(1000);
}
print(`primary: ${db.hello().primary}`);
